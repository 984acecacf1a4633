//! The API server and client over a real socket, against a VM control without vCPUs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::control::VmControl;
use crate::stop::{StopReason, StopSignal};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vmm-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("api.sock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn control() -> (Arc<VmControl>, Arc<StopSignal>) {
    let stop = Arc::new(StopSignal::new().unwrap());
    (Arc::new(VmControl::new(0, 64, stop.clone())), stop)
}

/// Sends raw bytes and reads one response line.
fn raw(stream: &mut UnixStream, bytes: &[u8]) -> String {
    stream.write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

#[test]
fn requests_over_the_socket() {
    let s = Scratch::new("requests");
    let (c, stop) = control();
    let server = ApiServer::start(&s.sock(), c, None).unwrap();
    let mode = std::fs::metadata(s.sock()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let mut client = ApiClient::connect(&s.sock(), Duration::from_secs(1)).unwrap();
    let d = client.describe().unwrap();
    assert_eq!(
        (d.state, d.mem_mib, d.pid),
        (VmState::Running, 64, std::process::id())
    );
    let p = client.pause().unwrap();
    assert_eq!((p.state, p.changed), (VmState::Paused, true));
    let p = client.pause().unwrap();
    assert_eq!((p.changed, p.message.as_str()), (false, "already paused"));
    assert_eq!(client.describe().unwrap().state, VmState::Paused);
    assert!(client.resume().unwrap().changed);
    assert!(!client.resume().unwrap().changed);
    assert_eq!(client.metrics().unwrap().exits.io_out, 0);

    let st = client.stop().unwrap();
    assert_eq!((st.state, st.changed), (VmState::Stopping, true));
    assert_eq!(stop.reason(), Some(StopReason::Requested));
    assert!(!client.stop().unwrap().changed);
    assert!(matches!(client.pause(), Err(ClientError::Refused(m)) if m.contains("stopping")));

    drop(server);
    assert!(
        !s.sock().exists(),
        "the socket file is removed with the server"
    );
}

#[test]
fn bad_requests_get_one_error_line_and_the_connection_stays_usable() {
    let s = Scratch::new("bad");
    let (c, _stop) = control();
    let _server = ApiServer::start(&s.sock(), c, None).unwrap();
    let mut conn = UnixStream::connect(s.sock()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for bad in [
        &b"{\"request\":\"frobnicate\"}\n"[..],
        b"not json\n",
        b"{\"request\":\"pause\",\"x\":1}\n",
        b"\xff\xfe\n",
    ] {
        let line = raw(&mut conn, bad);
        let r: ApiResponse = serde_json::from_str(&line).unwrap();
        assert!(
            matches!(r, ApiResponse::Error(ref m) if m.starts_with("bad request")),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }
    // Blank lines are skipped; two requests in one write get two answers, in order.
    conn.write_all(b"\n{\"request\":\"describe\"}\n{\"request\":\"metrics\"}\n")
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut a = String::new();
    reader.read_line(&mut a).unwrap();
    let mut b = String::new();
    reader.read_line(&mut b).unwrap();
    assert!(a.starts_with(r#"{"ok":{"describe""#), "{a}");
    assert!(b.starts_with(r#"{"ok":{"metrics""#), "{b}");
}

#[test]
fn disconnects_and_overlong_lines_do_not_hurt_the_server() {
    let s = Scratch::new("disconnect");
    let (c, _stop) = control();
    let _server = ApiServer::start(&s.sock(), c, None).unwrap();
    {
        let mut half = UnixStream::connect(s.sock()).unwrap();
        half.write_all(b"{\"request\":\"pau").unwrap();
    }
    let mut long = UnixStream::connect(s.sock()).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let line = raw(&mut long, &vec![b'x'; MAX_REQUEST_LINE + 10]);
    assert!(line.contains("longer than"), "{line}");
    let mut rest = String::new();
    let n = BufReader::new(long).read_line(&mut rest).unwrap();
    assert_eq!(n, 0, "the connection is closed after an overlong line");

    let mut client = ApiClient::connect(&s.sock(), Duration::from_secs(1)).unwrap();
    assert_eq!(client.describe().unwrap().state, VmState::Running);
}

#[test]
fn stale_sockets_are_replaced_and_other_files_refused() {
    let s = Scratch::new("stale");
    let stale = std::os::unix::net::UnixListener::bind(s.sock()).unwrap();
    drop(stale);
    let (c, _stop) = control();
    let server = ApiServer::start(&s.sock(), c.clone(), None).unwrap();
    ApiClient::connect(&s.sock(), Duration::from_secs(1))
        .unwrap()
        .describe()
        .unwrap();
    drop(server);

    std::fs::write(s.sock(), "data").unwrap();
    let err = ApiServer::start(&s.sock(), c, None).err().unwrap();
    assert!(matches!(err, ServerError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read_to_string(s.sock()).unwrap(), "data");
}

#[test]
fn connect_gives_up_after_the_timeout_or_when_told() {
    let s = Scratch::new("noserver");
    let t = std::time::Instant::now();
    let err = ApiClient::connect(&s.sock(), Duration::from_millis(100))
        .err()
        .unwrap();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(100));
    let err = ApiClient::connect_while(&s.sock(), Duration::from_secs(60), || false)
        .err()
        .unwrap();
    assert!(matches!(err, ClientError::GaveUp(_)), "{err}");
}

#[test]
fn the_stop_eventfd_stops_the_vm() {
    let s = Scratch::new("stopevt");
    let (c, stop) = control();
    let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    let _server = ApiServer::start(&s.sock(), c, Some(evt.try_clone().unwrap())).unwrap();
    evt.write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stop.reason().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stop.reason(), Some(StopReason::Requested));
}
