//! The agent's end of the sync socket of a process it started (the protocol is in
//! [`crate::child`]): a status byte at each step, `E<message>` on failure, EOF once the
//! process exec'd or died.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

/// What the sync socket said instead of the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The process reported an error, or stopped before the expected step.
    #[error("container process setup failed: {0}")]
    Child(String),
    /// The socket could not be read.
    #[error("read from container process failed: {0}")]
    Read(io::Error),
}

/// Reads the process's answer: `Ok(Some(b))` for a status byte, `Ok(None)` at EOF
/// (exec happened or the process died), `Err` with the process's message.
pub fn read(s: &mut UnixStream) -> Result<Option<u8>, SyncError> {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => Ok(None),
        Ok(_) if b[0] == b'E' => {
            let mut msg = String::new();
            let _ = s.read_to_string(&mut msg);
            Err(SyncError::Child(msg))
        }
        Ok(_) => Ok(Some(b[0])),
        Err(e) => Err(SyncError::Read(e)),
    }
}

/// Reads the status byte `want`; EOF or another byte fails with `otherwise`.
pub fn expect(s: &mut UnixStream, want: u8, otherwise: &str) -> Result<(), SyncError> {
    match read(s)? {
        Some(b) if b == want => Ok(()),
        _ => Err(SyncError::Child(otherwise.into())),
    }
}

/// Reads until EOF, which means the process exec'd; a status byte is an error.
pub fn expect_exec(s: &mut UnixStream) -> Result<(), SyncError> {
    match read(s)? {
        None => Ok(()),
        Some(b) => Err(SyncError::Child(format!("unexpected sync byte {b}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn answers_are_told_apart() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"R").unwrap();
        expect(&mut ours, b'R', "gone").unwrap();
        theirs.write_all(b"K").unwrap();
        let e = expect(&mut ours, b'R', "gone").unwrap_err();
        assert_eq!(e.to_string(), "container process setup failed: gone");
        theirs.write_all(b"Ebad mount").unwrap();
        drop(theirs);
        let e = read(&mut ours).unwrap_err();
        assert_eq!(e.to_string(), "container process setup failed: bad mount");
        expect_exec(&mut ours).unwrap();
    }
}
