//! Byte-stream transports: AF_VSOCK in the guest, Unix sockets for host tests,
//! and the hybrid vsock (Firecracker-style `CONNECT <port>` over a Unix socket)
//! the host runtime uses to reach the guest.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

/// Any-CID address for vsock listeners.
pub const VMADDR_CID_ANY: u32 = u32::MAX;
/// The host's CID.
pub const VMADDR_CID_HOST: u32 = 2;

/// Where an agent listens or can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix stream socket (host tests).
    Unix(PathBuf),
    /// AF_VSOCK `cid:port` (guest side, or hosts with vhost-vsock).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A VMM's hybrid vsock Unix socket; the client writes `CONNECT <port>\n`
    /// and expects `OK <host_port>\n`.
    HybridVsock {
        /// The VMM's Unix socket.
        path: PathBuf,
        /// Guest port.
        port: u32,
    },
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Socket creation, bind, connect or accept failed.
    #[error("{what} {endpoint}: {source}")]
    Socket {
        /// What was attempted.
        what: &'static str,
        /// The endpoint, for the message.
        endpoint: String,
        /// Cause.
        source: io::Error,
    },
    /// The VMM refused or garbled the hybrid vsock `CONNECT`.
    #[error("hybrid vsock CONNECT to port {port} via {path} failed: {reason}; is the guest agent running?")]
    HybridConnect {
        /// Socket path.
        path: String,
        /// Guest port.
        port: u32,
        /// What the VMM said or did.
        reason: String,
    },
    /// The endpoint kind cannot be listened on.
    #[error("cannot listen on {0}")]
    NotListenable(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Endpoint::HybridVsock { path, port } => write!(f, "hvsock:{}:{port}", path.display()),
        }
    }
}

/// A connected byte stream, whatever the transport.
#[derive(Debug)]
pub struct Stream(Socket);

impl Stream {
    /// Wraps a connected socket.
    pub fn from_socket(s: Socket) -> Self {
        Stream(s)
    }

    /// A second handle to the same connection (for a reader and a writer).
    pub fn try_clone(&self) -> io::Result<Stream> {
        self.0.try_clone().map(Stream)
    }

    /// Signals end of data to the peer; reading stays possible.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)
    }

    /// Closes both directions.
    pub fn shutdown(&self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Both)
    }

    /// Read timeout (`None` blocks forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(t)
    }

    /// Write timeout (`None` blocks forever).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.0.set_write_timeout(t)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream(Socket::from(OwnedFd::from(s)))
    }
}

impl From<Stream> for OwnedFd {
    fn from(s: Stream) -> Self {
        s.0.into()
    }
}

fn sock_err(what: &'static str, ep: &Endpoint) -> impl FnOnce(io::Error) -> TransportError {
    let endpoint = ep.to_string();
    move |source| TransportError::Socket {
        what,
        endpoint,
        source,
    }
}

impl Endpoint {
    /// Opens a connection (for hybrid vsock, including the `CONNECT` exchange).
    pub fn connect(&self) -> Result<Stream, TransportError> {
        match self {
            Endpoint::Unix(path) => UnixStream::connect(path)
                .map(Stream::from)
                .map_err(sock_err("connect to", self)),
            Endpoint::Vsock { cid, port } => {
                let s = Socket::new(Domain::VSOCK, Type::STREAM, None)
                    .map_err(sock_err("create socket for", self))?;
                s.connect(&SockAddr::vsock(*cid, *port))
                    .map_err(sock_err("connect to", self))?;
                Ok(Stream(s))
            }
            Endpoint::HybridVsock { path, port } => hybrid_connect(path, *port),
        }
    }

    /// Binds a listener (Unix or vsock).
    pub fn listen(&self) -> Result<Listener, TransportError> {
        match self {
            Endpoint::Unix(path) => {
                // A stale socket file from an earlier run would make bind fail.
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path)
                    .map(|l| Listener(Socket::from(OwnedFd::from(l))))
                    .map_err(sock_err("listen on", self))
            }
            Endpoint::Vsock { cid, port } => {
                let s = Socket::new(Domain::VSOCK, Type::STREAM, None)
                    .map_err(sock_err("create socket for", self))?;
                s.bind(&SockAddr::vsock(*cid, *port))
                    .map_err(sock_err("bind", self))?;
                s.listen(128).map_err(sock_err("listen on", self))?;
                Ok(Listener(s))
            }
            Endpoint::HybridVsock { .. } => Err(TransportError::NotListenable(self.to_string())),
        }
    }
}

fn hybrid_connect(path: &Path, port: u32) -> Result<Stream, TransportError> {
    let fail = |reason: String| TransportError::HybridConnect {
        path: path.display().to_string(),
        port,
        reason,
    };
    let mut s = UnixStream::connect(path).map_err(|e| fail(e.to_string()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    // Read the status line byte by byte: anything after '\n' belongs to the
    // protocol on top and must stay in the socket.
    let mut line = Vec::with_capacity(32);
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err(fail("connection closed by the VMM".into())),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() >= 64 => return Err(fail("status line too long".into())),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        return Err(fail(format!("VMM answered {line:?}")));
    }
    Ok(Stream::from(s))
}

/// A listening socket.
#[derive(Debug)]
pub struct Listener(Socket);

impl Listener {
    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Stream> {
        loop {
            match self.0.accept() {
                Ok((s, _)) => return Ok(Stream(s)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
