//! A task's standard streams: the FIFOs containerd names in Create/Exec (CRI's container
//! logs are read from them), turned into the host fds `sandbox::stdio` copies to and from
//! the guest. A terminal needs no host pty: the guest agent gives the process a pty of its
//! own (line discipline and window size live there; ResizePty goes to the agent), so the
//! FIFOs carry the terminal's raw bytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sandbox::stdio::HostIo;

/// Errors opening a task's streams.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("cannot open the {what} FIFO {path}: {err}")]
    Open {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("cannot create the stdin pipe: {0}")]
    Pipe(nix::Error),
}

/// The stream paths of a task or exec, as containerd gave them (empty: not attached).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Ends a process's stdin (CloseIO, or the task going away).
#[derive(Clone, Debug)]
pub struct StdinCloser {
    fifo: PathBuf,
    writer: Arc<Mutex<Option<File>>>,
}

impl StdinCloser {
    /// Closes the guest's stdin; also wakes the relay thread if it still waits for a
    /// writer on the FIFO (it then reads EOF and ends).
    pub fn close(&self) {
        let had = self.writer.lock().expect("poisoned").take().is_some();
        if had {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.fifo);
        }
    }
}

/// Opens an output FIFO read-write: the open never blocks (containerd may open its
/// reader later) and a reader going away does not stop the copy.
fn open_output(what: &'static str, path: &str) -> Result<Option<OwnedFd>, IoError> {
    if path.is_empty() {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|err| IoError::Open {
            what,
            path: path.into(),
            err,
        })?;
    Ok(Some(f.into()))
}

/// Copies the stdin FIFO into a pipe whose read end the guest's stdin is copied from;
/// the writer can be dropped early by [`StdinCloser::close`].
fn stdin_relay(fifo: &Path) -> Result<(OwnedFd, StdinCloser), IoError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(IoError::Pipe)?;
    let closer = StdinCloser {
        fifo: fifo.to_path_buf(),
        writer: Arc::new(Mutex::new(Some(File::from(w)))),
    };
    let writer = closer.writer.clone();
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        // Blocks until containerd (or close()) opens the writing end.
        let Ok(mut from) = File::open(&fifo) else {
            writer.lock().expect("poisoned").take();
            return;
        };
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut w = writer.lock().expect("poisoned");
            let Some(to) = w.as_mut() else { return };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        writer.lock().expect("poisoned").take();
    });
    Ok((r, closer))
}

/// The host ends of `paths`' streams; with a terminal, stderr is part of the terminal.
pub fn open(paths: &IoPaths) -> Result<(HostIo, Option<StdinCloser>), IoError> {
    let stdout = open_output("stdout", &paths.stdout)?;
    let stderr = match paths.terminal {
        true => None,
        false => open_output("stderr", &paths.stderr)?,
    };
    let (stdin, closer) = match paths.stdin.as_str() {
        "" => (None, None),
        p => {
            let (fd, c) = stdin_relay(Path::new(p))?;
            (Some(fd), Some(c))
        }
    };
    Ok((
        HostIo {
            stdin,
            stdout,
            stderr,
        },
        closer,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p.display().to_string()
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shim-io-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn outputs_open_without_a_reader_and_stdin_is_relayed_until_closed() {
        let d = tmpdir("relay");
        let paths = IoPaths {
            stdin: mkfifo(&d, "in"),
            stdout: mkfifo(&d, "out"),
            stderr: String::new(),
            terminal: false,
        };
        let (io, closer) = open(&paths).unwrap();
        assert!(io.stdout.is_some() && io.stderr.is_none());
        let mut guest_side = File::from(io.stdin.unwrap());
        let mut w = OpenOptions::new().write(true).open(&paths.stdin).unwrap();
        w.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        guest_side.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // CloseIO: the guest side sees EOF although the FIFO's writer is still open.
        closer.unwrap().close();
        let mut rest = Vec::new();
        guest_side.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn close_wakes_a_relay_that_never_saw_a_writer() {
        let d = tmpdir("nowriter");
        let paths = IoPaths {
            stdin: mkfifo(&d, "in"),
            ..Default::default()
        };
        let (io, closer) = open(&paths).unwrap();
        closer.unwrap().close();
        let mut rest = Vec::new();
        File::from(io.stdin.unwrap())
            .read_to_end(&mut rest)
            .unwrap();
        assert!(rest.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_terminal_has_no_separate_stderr_and_missing_fifos_fail() {
        let d = tmpdir("tty");
        let paths = IoPaths {
            stdout: mkfifo(&d, "out"),
            stderr: mkfifo(&d, "err"),
            terminal: true,
            ..Default::default()
        };
        let (io, closer) = open(&paths).unwrap();
        assert!(io.stderr.is_none() && io.stdin.is_none() && closer.is_none());
        let bad = IoPaths {
            stdout: d.join("missing").display().to_string(),
            ..Default::default()
        };
        assert!(matches!(
            open(&bad),
            Err(IoError::Open { what: "stdout", .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
