//! What a runtime root leaves on the host: processes, mounts, state directories, jail
//! cgroups. The fault and soak tests compare it before and after.

use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Processes whose command line mentions the root.
    pub processes: Vec<String>,
    /// Mounts under the root.
    pub mounts: usize,
    /// Entries in the root (state directories).
    pub state_dirs: usize,
    /// Memory cgroups of jails (`sandbox-vm/*`), host-wide.
    pub cgroups: usize,
    /// Unix sockets under the root (from /proc/net/unix).
    pub sockets: usize,
}

fn count_dirs(p: &Path) -> usize {
    std::fs::read_dir(p).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .count()
    })
}

pub fn footprint(root: &Path) -> Footprint {
    let needle = root.to_string_lossy().into_owned();
    let mut processes = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                processes.push(cmd);
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .count();
    let sockets = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .count();
    Footprint {
        processes,
        mounts,
        state_dirs: std::fs::read_dir(root).map_or(0, |d| d.count()),
        cgroups: count_dirs(Path::new("/sys/fs/cgroup/memory/sandbox-vm"))
            + count_dirs(Path::new("/sys/fs/cgroup/sandbox-vm")),
        sockets,
    }
}

/// Open file descriptors of this process.
#[allow(dead_code)] // the soak test's only
pub fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Runs `cmd` with its stdout and stderr in files and returns them as `Output`: `create`
/// hands its stdio to the monitor, which outlives it, so pipes would never reach EOF.
pub fn output_via_files(cmd: &mut std::process::Command) -> std::process::Output {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let base = std::env::temp_dir().join(format!("svm-out-{}-{n}", std::process::id()));
    let (out, err) = (base.with_extension("out"), base.with_extension("err"));
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let output = std::process::Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(err);
    output
}
