//! A blocking client of the VMM's control API (for the runtime and tests).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::api::{
    ApiRequest, ApiResponse, ResponseBody, SnapshotInfo, StateChange, VmDescription, VmMetrics,
};

/// How long a request waits for its response unless `set_timeout` says otherwise (a pause
/// may take up to the VMM's pause timeout, 10 s).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// Errors talking to the VMM.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the VMM API socket {path} within {ms} ms: {err}")]
    Connect {
        path: std::path::PathBuf,
        ms: u128,
        err: std::io::Error,
    },
    #[error("gave up connecting to the VMM API socket {0}")]
    GaveUp(std::path::PathBuf),
    #[error("VMM API connection: {0}")]
    Io(std::io::Error),
    #[error("the VMM closed the API connection")]
    Closed,
    #[error("bad response from the VMM: {0}")]
    BadResponse(serde_json::Error),
    #[error("the VMM refused the request: {0}")]
    Refused(String),
    #[error("the VMM answered {0:?} with another request's body")]
    Mismatch(ApiRequest),
}

/// One connection to a VMM's API socket.
pub struct ApiClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ApiClient {
    /// Connects, retrying while the socket does not exist or does not accept yet (the VMM
    /// binds it once the VM is built, so a successful connect means "ready"), for at most
    /// `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_while(path, timeout, || true)
    }

    /// Like `connect`, but also gives up as soon as `keep_trying` returns false (e.g. when
    /// the VMM process has exited).
    pub fn connect_while(
        path: &Path,
        timeout: Duration,
        mut keep_trying: impl FnMut() -> bool,
    ) -> Result<Self, ClientError> {
        let start = Instant::now();
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Self::from_stream(s),
                Err(err) if start.elapsed() >= timeout || !retryable(&err) => {
                    return Err(ClientError::Connect {
                        path: path.to_path_buf(),
                        ms: timeout.as_millis(),
                        err,
                    })
                }
                Err(_) if !keep_trying() => return Err(ClientError::GaveUp(path.to_path_buf())),
                Err(_) => std::thread::sleep(CONNECT_RETRY),
            }
        }
    }

    fn from_stream(s: UnixStream) -> Result<Self, ClientError> {
        let writer = s.try_clone().map_err(ClientError::Io)?;
        let c = Self {
            reader: BufReader::new(s),
            writer,
        };
        c.set_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))?;
        Ok(c)
    }

    /// How long to wait for a response (and for the request to be taken); None = forever.
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ClientError> {
        self.writer.set_write_timeout(t).map_err(ClientError::Io)?;
        self.reader
            .get_ref()
            .set_read_timeout(t)
            .map_err(ClientError::Io)
    }

    /// Sends one request and reads its response; an `{"error"}` response is `Refused`.
    pub fn request(&mut self, req: &ApiRequest) -> Result<ResponseBody, ClientError> {
        let mut line = serde_json::to_string(req).map_err(ClientError::BadResponse)?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(ClientError::Io)?;
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(ClientError::Io)?;
        if n == 0 || !answer.ends_with('\n') {
            return Err(ClientError::Closed);
        }
        match serde_json::from_str(&answer).map_err(ClientError::BadResponse)? {
            ApiResponse::Ok(body) => Ok(body),
            ApiResponse::Error(msg) => Err(ClientError::Refused(msg)),
        }
    }

    /// The VM's state, shape and devices.
    pub fn describe(&mut self) -> Result<VmDescription, ClientError> {
        match self.request(&ApiRequest::Describe {})? {
            ResponseBody::Describe(d) => Ok(d),
            _ => Err(ClientError::Mismatch(ApiRequest::Describe {})),
        }
    }

    /// Stops the vCPUs; returns once all are parked.
    pub fn pause(&mut self) -> Result<StateChange, ClientError> {
        match self.request(&ApiRequest::Pause {})? {
            ResponseBody::Pause(s) => Ok(s),
            _ => Err(ClientError::Mismatch(ApiRequest::Pause {})),
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&mut self) -> Result<StateChange, ClientError> {
        match self.request(&ApiRequest::Resume {})? {
            ResponseBody::Resume(s) => Ok(s),
            _ => Err(ClientError::Mismatch(ApiRequest::Resume {})),
        }
    }

    /// Asks the VMM to end the run (it exits 0); returns before the process is gone.
    pub fn stop(&mut self) -> Result<StateChange, ClientError> {
        match self.request(&ApiRequest::Stop {})? {
            ResponseBody::Stop(s) => Ok(s),
            _ => Err(ClientError::Mismatch(ApiRequest::Stop {})),
        }
    }

    /// Saves the paused VM into `dir` (see `ApiRequest::Snapshot`).
    pub fn snapshot(&mut self, dir: &Path) -> Result<SnapshotInfo, ClientError> {
        let req = ApiRequest::Snapshot {
            dir: dir.to_path_buf(),
        };
        match self.request(&req)? {
            ResponseBody::Snapshot(s) => Ok(s),
            _ => Err(ClientError::Mismatch(req)),
        }
    }

    /// Exit and device counters.
    pub fn metrics(&mut self) -> Result<VmMetrics, ClientError> {
        match self.request(&ApiRequest::Metrics {})? {
            ResponseBody::Metrics(m) => Ok(m),
            _ => Err(ClientError::Mismatch(ApiRequest::Metrics {})),
        }
    }
}

/// Errors meaning "not listening yet".
fn retryable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::EAGAIN)
    )
}
