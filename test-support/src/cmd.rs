//! Running commands and waiting for things.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` with no stdin and its output captured; fails the test if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Bytes as text, invalid UTF-8 replaced.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stdout of a run that must have succeeded; fails with `what`, the status, stdout and
/// stderr otherwise.
pub fn ok(out: Output, what: &str) -> String {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

/// Runs `args[0]` with the rest as its arguments; its stdout, as [`ok`] checks it.
pub fn run_ok(args: &[&str]) -> String {
    ok(
        Command::new(args[0]).args(&args[1..]).output().unwrap(),
        &args.join(" "),
    )
}

/// Runs `cmd` with its stdout and stderr in files and returns them as `Output`: a
/// `sandbox-vm create` hands its stdio to the monitor, which outlives it, so pipes would
/// never reach EOF.
pub fn output_via_files(cmd: &mut Command) -> Output {
    let base = std::env::temp_dir().join(crate::unique("svm-out"));
    let (out, err) = (base.with_extension("out"), base.with_extension("err"));
    let status = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let output = Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(err);
    output
}

/// Where `name` is on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Calls `f` every `every` until it holds (true) or `timeout` has passed (false).
pub fn poll_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Waits (polling every 200 ms) for `f` to hold; fails the test after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(
        poll_until(timeout, Duration::from_millis(200), f),
        "timed out waiting for {what}"
    );
}

/// Waits up to `timeout` for `child` to exit; kills it and fails the test otherwise.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let mut status = None;
    poll_until(timeout, Duration::from_millis(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("process {} did not exit within {timeout:?}", child.id())
    })
}

/// A child killed (and reaped) when dropped, so a failing test leaves no process.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_returns_stdout_and_fails_with_stderr() {
        assert_eq!(run_ok(&["sh", "-c", "echo hi"]), "hi\n");
        let failed = std::panic::catch_unwind(|| {
            ok(
                run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])),
                "the step",
            )
        });
        let msg = *failed.unwrap_err().downcast::<String>().unwrap();
        assert!(
            msg.starts_with("the step: ") && msg.contains("stderr: oops"),
            "{msg}"
        );
    }

    #[test]
    fn output_via_files_collects_both_streams() {
        let out = output_via_files(Command::new("sh").args(["-c", "echo a; echo b >&2"]));
        assert!(out.status.success());
        assert_eq!(
            (text(&out.stdout), text(&out.stderr)),
            ("a\n".into(), "b\n".into())
        );
    }

    #[test]
    fn wait_exit_returns_the_status_or_kills() {
        let mut c = Command::new("sh").args(["-c", "exit 4"]).spawn().unwrap();
        assert_eq!(wait_exit(&mut c, Duration::from_secs(10)).code(), Some(4));
        let mut c = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = c.id();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_exit(&mut c, Duration::from_millis(50))
        }));
        assert!(r.is_err());
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn poll_until_gives_up() {
        let mut n = 0;
        assert!(poll_until(Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            n == 3
        }));
        assert!(!poll_until(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || false
        ));
        assert!(which("sh").is_some() && which("no-such-program-here").is_none());
    }
}
