//! Length-prefixed JSON framing.
//!
//! A frame is a 4-byte little-endian body length followed by that many bytes of
//! JSON. Bodies larger than [`MAX_FRAME_LEN`] are refused before any allocation,
//! so a hostile or confused peer cannot make either side allocate more than
//! 1 MiB per frame. A frame whose body is not valid JSON for the expected type
//! leaves the stream in sync (the whole body was consumed), so the reader may
//! answer with an error and go on; an oversized length cannot be skipped safely
//! and ends the connection.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest accepted frame body, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection cleanly between two frames.
    #[error("connection closed by peer")]
    Closed,
    /// The underlying stream failed (including EOF in the middle of a frame).
    #[error("agent connection I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The length prefix announced a body larger than the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced (or attempted) body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The body was read completely but is not a valid message; the stream is
    /// still in sync.
    #[error("malformed frame: {0}")]
    Malformed(serde_json::Error),
    /// A message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(serde_json::Error),
}

impl FrameError {
    /// True when the connection can keep being used after this error.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, FrameError::Malformed(_))
    }
}

/// Encodes `msg` as one frame (header and body in a single `write_all`).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, msg).map_err(FrameError::Encode)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // The limit above keeps `len` well inside u32.
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Writes `msg` as one frame and flushes.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let buf = encode_frame(msg)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame body, refusing bodies over `max` bytes.
pub fn read_frame_bytes<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut hdr = [0u8; 4];
    let mut got = 0;
    while got < hdr.len() {
        match r.read(&mut hdr[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(hdr) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads and decodes one frame of type `T`.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let body = read_frame_bytes(r, MAX_FRAME_LEN)?;
    serde_json::from_slice(&body).map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clean_close() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &vec![1u32, 2, 3]).unwrap();
        assert_eq!(&buf[..4], &7u32.to_le_bytes());
        let mut r = &buf[..];
        let v: Vec<u32> = read_frame(&mut r).unwrap();
        assert_eq!(v, vec![1, 2, 3]);
        assert!(matches!(
            read_frame::<_, Vec<u32>>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn oversized_header_is_refused_without_reading_body() {
        let buf = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        let err = read_frame::<_, u32>(&mut &buf[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(!err.is_recoverable());
    }

    #[test]
    fn oversized_message_is_not_written() {
        let big = "x".repeat(MAX_FRAME_LEN);
        let mut out = Vec::new();
        assert!(matches!(
            write_frame(&mut out, &big),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_body_keeps_stream_in_sync() {
        let mut buf = 5u32.to_le_bytes().to_vec();
        buf.extend_from_slice(b"{nope");
        write_frame(&mut buf, &42u32).unwrap();
        let mut r = &buf[..];
        let err = read_frame::<_, u32>(&mut r).unwrap_err();
        assert!(err.is_recoverable());
        assert_eq!(read_frame::<_, u32>(&mut r).unwrap(), 42);
    }

    #[test]
    fn truncated_frame_is_an_io_error() {
        let mut buf = 10u32.to_le_bytes().to_vec();
        buf.extend_from_slice(b"12");
        assert!(matches!(
            read_frame::<_, u32>(&mut &buf[..]),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            read_frame::<_, u32>(&mut &[1u8, 0][..]),
            Err(FrameError::Io(_))
        ));
    }
}
