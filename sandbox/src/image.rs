//! The container's root filesystem as an ext4 image for virtio-blk (the `block` rootfs
//! mode): `mkfs.ext4 -d` copies the rootfs directory into a sparse file without mounting
//! anything. (Bind mounts reach the guest through the share in both modes.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Room on top of the rootfs contents: ext4 metadata and the container's own writes.
pub const MARGIN_BYTES: u64 = 64 << 20;

/// Errors making the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot create rootfs image {path}: {err}")]
    Create { path: PathBuf, err: std::io::Error },
    #[error("cannot run {tool}: {err} (install e2fsprogs)")]
    Spawn {
        tool: &'static str,
        err: std::io::Error,
    },
    #[error("{tool} failed making {path}: {msg}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        msg: String,
    },
}

/// Bytes under `dir`, not following symlinks, plus a block per entry for metadata.
pub fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += 4096 + m.len().next_multiple_of(4096);
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Image size for a rootfs of `content` bytes: +25% and the margin, whole MiB.
pub fn image_size(content: u64) -> u64 {
    (content + content / 4 + MARGIN_BYTES).next_multiple_of(1 << 20)
}

fn run(tool: &'static str, img: &Path, cmd: &mut Command) -> Result<(), ImageError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|err| ImageError::Spawn { tool, err })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(ImageError::Tool {
            tool,
            path: img.into(),
            msg: msg.trim().lines().last().unwrap_or("no output").to_string(),
        });
    }
    Ok(())
}

/// Makes `img` from `rootfs`.
pub fn build(rootfs: &Path, img: &Path) -> Result<(), ImageError> {
    let size = image_size(tree_size(rootfs));
    let f = fs::File::create(img).map_err(|err| ImageError::Create {
        path: img.into(),
        err,
    })?;
    f.set_len(size).map_err(|err| ImageError::Create {
        path: img.into(),
        err,
    })?;
    drop(f);
    // No journal: the guest kernel's work is expensive on emulating hosts, and the image
    // lives only as long as the container.
    run(
        "mkfs.ext4",
        img,
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(rootfs)
            .arg(img),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(image_size(0), MARGIN_BYTES);
        assert_eq!(image_size(4 << 20), MARGIN_BYTES + (5 << 20));
        assert_eq!(image_size(1) % (1 << 20), 0);
    }

    #[test]
    fn builds_an_image_of_the_rootfs() {
        let dir = std::env::temp_dir().join(format!("svm-image-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
        fs::write(dir.join("rootfs/etc/hosts"), "old").unwrap();
        let img = dir.join("r.img");
        build(&dir.join("rootfs"), &img).unwrap();
        let out = Command::new("debugfs")
            .args(["-R", "cat /etc/hosts"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "old");
        let _ = fs::remove_dir_all(&dir);
    }
}
