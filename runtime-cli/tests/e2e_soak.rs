//! Soak: SOAK_COUNT (default 20) sandboxes created, exec'd into and deleted, 2 to 4 at a
//! time; the host's processes, mounts, sockets, state directories and jail cgroups, and
//! this process's fds, are counted before and after and must match.
//!
//! Ignored in `cargo test`: each sandbox boots the real guest (25-40 s on hosts that
//! emulate guest kernel mode, minutes under load), so this runs for many minutes. Run it
//! with `tests/soak.sh`.

use std::path::{Path, PathBuf};
use std::process::Output;

use test_support::cmd::output_via_files;
use test_support::fresh_dir;
use test_support::host::{footprint, own_fds};
use test_support::rootfs::busybox_bundle;
use test_support::runtime::oci_command;

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

fn cli(root: &Path, args: &[&str]) -> Output {
    output_via_files(oci_command(BIN, root).args(args))
}

/// One sandbox's life; returns what went wrong, if anything.
fn life(root: &Path, bundle: &Path, id: &str) -> Result<(), String> {
    let step = |args: &[&str]| {
        let out = cli(root, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{id}: {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let b = bundle.to_str().unwrap();
    let result = step(&["create", "--bundle", b, id])
        .and_then(|_| step(&["start", id]))
        .and_then(|_| step(&["exec", id, "echo", &format!("soak-{id}")]))
        .and_then(|out| {
            if out.contains(&format!("soak-{id}")) {
                Ok(())
            } else {
                Err(format!("{id}: exec printed {out:?}"))
            }
        });
    let deleted = step(&["delete", "--force", id]).map(|_| ());
    result.and(deleted)
}

#[test]
#[ignore = "boots SOAK_COUNT real guests (20 by default): many minutes; run tests/soak.sh"]
fn soak_sandboxes_leave_the_host_as_they_found_it() {
    let count: usize = std::env::var("SOAK_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = fresh_dir("svm-soak");
    let root: PathBuf = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let bundle = busybox_bundle(BIN, &dir.join("bundle"), &["sleep", "600"]);
    let before = (footprint(&root), own_fds());
    let mut done = 0;
    let mut errors = Vec::new();
    let started = std::time::Instant::now();
    // 2, 3, 4, 2, 3, 4, ... at a time.
    for width in [2, 3, 4].into_iter().cycle() {
        if done >= count {
            break;
        }
        let batch: Vec<String> = (done..(done + width).min(count))
            .map(|i| format!("soak{i}"))
            .collect();
        done += batch.len();
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|id| s.spawn(|| life(&root, &bundle, id)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        errors.extend(results.into_iter().filter_map(Result::err));
        eprintln!(
            "[soak] {done}/{count} after {:.0} s, {} errors",
            started.elapsed().as_secs_f64(),
            errors.len()
        );
    }
    let after = (footprint(&root), own_fds());
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("[soak] before {before:?}\n[soak] after  {after:?}");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(before, after);
}
