//! The Unix socket backend with real sockets in a temporary directory, driven through the
//! muxer by a simulated guest.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::CONN_BUF_ALLOC;
use super::muxer::{Muxer, FIRST_LOCAL_PORT, HOST_CID};
use super::packet::{op, VsockHeader, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::unix::UnixBackend;

const CID: u64 = 3;

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sandbox-vm-vsock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Guest {
    m: Muxer<UnixBackend>,
    epoll: Epoll,
    dir: TempDir,
    buf: Vec<u8>,
}

type Pkt = (VsockHeader, Vec<u8>);

impl Guest {
    fn new() -> Self {
        let dir = TempDir::new();
        let m = Muxer::new(CID, UnixBackend::new(dir.0.join("v.sock")).unwrap());
        let epoll = Epoll::new().unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                m.backend().as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        Self {
            m,
            epoll,
            dir,
            buf: vec![0; MAX_PKT_DATA],
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.0.join("v.sock")
    }

    fn send(&mut self, op: u16, src: u32, dst: u32, data: &[u8]) {
        self.send_credit(op, src, dst, data, 0, 0, 64 * 1024);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_credit(
        &mut self,
        op: u16,
        src: u32,
        dst: u32,
        data: &[u8],
        flags: u32,
        fwd_cnt: u32,
        buf_alloc: u32,
    ) {
        let hdr = VsockHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        self.m.send_pkt(&hdr, data);
    }

    /// Waits up to `wait` for backend events, handles them, and returns what the guest
    /// receives.
    fn pump(&mut self, wait: Duration) -> Vec<Pkt> {
        let mut out = Vec::new();
        while let Some((h, n)) = self.m.recv_pkt(&mut self.buf) {
            out.push((h, self.buf[..n].to_vec()));
        }
        let mut ev = [EpollEvent::default()];
        if self.epoll.wait(wait.as_millis() as i32, &mut ev).unwrap() > 0 {
            self.m.process_backend();
        }
        while let Some((h, n)) = self.m.recv_pkt(&mut self.buf) {
            out.push((h, self.buf[..n].to_vec()));
        }
        out
    }

    /// Pumps until a packet with `op` arrives; returns everything received up to it.
    fn pump_until_op(&mut self, op: u16) -> Vec<Pkt> {
        let start = Instant::now();
        let mut all = Vec::new();
        while start.elapsed() < Duration::from_secs(5) {
            all.extend(self.pump(Duration::from_millis(20)));
            if all.iter().any(|p: &Pkt| p.0.op == op) {
                return all;
            }
        }
        panic!(
            "no packet with op {op}; got {:?}",
            all.iter().map(|p| p.0).collect::<Vec<_>>()
        );
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn client_sees_eof(s: &mut UnixStream, g: &mut Guest) -> bool {
    s.set_nonblocking(true).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        g.pump(Duration::from_millis(10));
        match s.read(&mut [0u8; 64]) {
            Ok(0) => return true,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Ok(_) => return false,
            Err(_) => {}
        }
    }
    false
}

#[test]
fn host_connect_gets_ok_after_guest_response_and_data_flows() {
    let mut g = Guest::new();
    let mut c = UnixStream::connect(g.path()).unwrap();
    c.write_all(b"CONNECT 1234\nearly").unwrap();
    let r = g.pump_until_op(op::REQUEST);
    let req = r.iter().find(|p| p.0.op == op::REQUEST).unwrap().0;
    assert_eq!((req.src_port, req.dst_port), (FIRST_LOCAL_PORT, 1234));

    // Nothing for the host before the guest accepts.
    c.set_nonblocking(true).unwrap();
    assert_eq!(
        c.read(&mut [0u8; 8]).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    c.set_nonblocking(false).unwrap();

    g.send(op::RESPONSE, 1234, FIRST_LOCAL_PORT, b"");
    assert_eq!(read_line(&mut c), format!("OK {FIRST_LOCAL_PORT}"));

    // Bytes sent right behind the CONNECT line are stream data.
    let r = g.pump_until_op(op::RW);
    let data: Vec<u8> = r.iter().flat_map(|p| p.1.clone()).collect();
    assert_eq!(data, b"early");

    g.send(op::RW, 1234, FIRST_LOCAL_PORT, b"hi host");
    let mut got = [0u8; 7];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hi host");

    // The host closes: the guest gets SHUTDOWN, answers RST.
    drop(c);
    let r = g.pump_until_op(op::SHUTDOWN);
    assert_eq!(r.last().unwrap().0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.send(op::RST, 1234, FIRST_LOCAL_PORT, b"");
    assert_eq!(g.m.connection_count(), 0);
}

#[test]
fn lowercase_connect_is_accepted() {
    let mut g = Guest::new();
    let mut c = UnixStream::connect(g.path()).unwrap();
    c.write_all(b"connect 1024\n").unwrap();
    let r = g.pump_until_op(op::REQUEST);
    assert_eq!(r[0].0.dst_port, 1024);
}

#[test]
fn bad_handshakes_are_dropped() {
    let mut g = Guest::new();
    let mut garbage = UnixStream::connect(g.path()).unwrap();
    garbage.write_all(b"HELLO 1234\n").unwrap();
    assert!(client_sees_eof(&mut garbage, &mut g));

    let mut long = UnixStream::connect(g.path()).unwrap();
    long.write_all(&[b'7'; 40]).unwrap();
    assert!(client_sees_eof(&mut long, &mut g));

    g.m.backend_mut()
        .set_handshake_timeout(Duration::from_millis(30));
    let mut silent = UnixStream::connect(g.path()).unwrap();
    assert!(client_sees_eof(&mut silent, &mut g));
    assert_eq!(g.m.connection_count(), 0);
}

#[test]
fn guest_silence_times_out_the_host_connection() {
    let mut g = Guest::new();
    g.m.set_timeout(Duration::from_millis(50));
    let mut c = UnixStream::connect(g.path()).unwrap();
    c.write_all(b"CONNECT 1234\n").unwrap();
    g.pump_until_op(op::REQUEST);
    // The muxer's deadline wakes the backend's timerfd; no guest activity needed.
    let r = g.pump_until_op(op::RST);
    assert_eq!(r.last().unwrap().0.dst_port, 1234);
    assert!(client_sees_eof(&mut c, &mut g));
    assert_eq!(g.m.connection_count(), 0);
}

#[test]
fn guest_refusal_closes_the_host_stream() {
    let mut g = Guest::new();
    let mut c = UnixStream::connect(g.path()).unwrap();
    c.write_all(b"CONNECT 1234\n").unwrap();
    g.pump_until_op(op::REQUEST);
    g.send(op::RST, 1234, FIRST_LOCAL_PORT, b"");
    assert!(client_sees_eof(&mut c, &mut g));
}

#[test]
fn guest_connects_to_listening_host_port() {
    let mut g = Guest::new();
    let mut p = g.path().into_os_string();
    p.push("_5000");
    let listener = UnixListener::bind(&p).unwrap();
    g.send(op::REQUEST, 777, 5000, b"");
    let r = g.pump(Duration::ZERO);
    assert_eq!(r[0].0.op, op::RESPONSE);
    let (mut s, _) = listener.accept().unwrap();

    g.send(op::RW, 777, 5000, b"from guest");
    let mut got = [0u8; 10];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from guest");

    s.write_all(b"from host").unwrap();
    let r = g.pump_until_op(op::RW);
    assert_eq!(r.last().unwrap().1, b"from host");

    // The guest closes: the host reads EOF, the guest gets RST.
    g.send_credit(
        op::SHUTDOWN,
        777,
        5000,
        b"",
        SHUTDOWN_RCV | SHUTDOWN_SEND,
        9,
        65536,
    );
    assert_eq!(g.pump(Duration::ZERO)[0].0.op, op::RST);
    assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn guest_connect_without_listener_gets_rst() {
    let mut g = Guest::new();
    g.send(op::REQUEST, 777, 6000, b"");
    let r = g.pump(Duration::ZERO);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0.op, op::RST);
    assert_eq!((r[0].0.src_port, r[0].0.dst_port), (6000, 777));
}

#[test]
fn stale_socket_is_replaced_and_removed_on_drop() {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let b = UnixBackend::new(&path).unwrap();
    assert!(UnixStream::connect(&path).is_ok());
    drop(b);
    assert!(!path.exists());
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Guest → host bulk data through a slow host reader: the guest honours our credit, the
/// muxer buffers what the socket will not take, and every byte arrives in order.
#[test]
fn bulk_guest_to_host_under_backpressure_loses_nothing() {
    const TOTAL: usize = 3 << 20;
    let mut g = Guest::new();
    let mut p = g.path().into_os_string();
    p.push("_5000");
    let listener = UnixListener::bind(&p).unwrap();
    g.send(op::REQUEST, 777, 5000, b"");
    assert_eq!(g.pump(Duration::ZERO)[0].0.op, op::RESPONSE);
    let (mut s, _) = listener.accept().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).unwrap() {
                0 => return got,
                n => got.extend_from_slice(&buf[..n]),
            }
            if got.len() < (1 << 20) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });

    let data = pattern(TOTAL);
    let (mut sent, mut host_fwd) = (0usize, 0u32);
    let start = Instant::now();
    while sent < TOTAL {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stalled at {sent}"
        );
        let credit = CONN_BUF_ALLOC - (sent as u32).wrapping_sub(host_fwd);
        let n = (credit as usize).min(MAX_PKT_DATA).min(TOTAL - sent);
        if n > 0 {
            g.send(op::RW, 777, 5000, &data[sent..sent + n]);
            sent += n;
        }
        for (h, _) in g.pump(Duration::from_millis(if n > 0 { 0 } else { 5 })) {
            assert_ne!(h.op, op::RST);
            host_fwd = h.fwd_cnt;
        }
    }
    g.send_credit(
        op::SHUTDOWN,
        777,
        5000,
        b"",
        SHUTDOWN_RCV | SHUTDOWN_SEND,
        0,
        65536,
    );
    g.pump_until_op(op::RST);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got == data);
}

/// Host → guest bulk data into a guest with a small receive buffer: never more than its
/// credit in flight, and everything arrives, then SHUTDOWN.
#[test]
fn bulk_host_to_guest_respects_guest_credit() {
    const TOTAL: usize = 2 << 20;
    const GUEST_BUF: u32 = 48 * 1024;
    let mut g = Guest::new();
    let mut c = UnixStream::connect(g.path()).unwrap();
    c.write_all(b"CONNECT 1024\n").unwrap();
    g.pump_until_op(op::REQUEST);
    g.send_credit(op::RESPONSE, 1024, FIRST_LOCAL_PORT, b"", 0, 0, GUEST_BUF);
    assert_eq!(read_line(&mut c), format!("OK {FIRST_LOCAL_PORT}"));
    let data = pattern(TOTAL);
    let to_send = data.clone();
    let writer = std::thread::spawn(move || {
        c.write_all(&to_send).unwrap();
        // Dropping `c` closes the stream.
    });

    let mut got = Vec::new();
    let mut consumed = 0u32;
    let start = Instant::now();
    let mut shut = false;
    while !shut {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stalled at {}",
            got.len()
        );
        for (h, d) in g.pump(Duration::from_millis(5)) {
            match h.op {
                op::RW => {
                    got.extend_from_slice(&d);
                    let in_flight = got.len() as u32 - consumed;
                    assert!(in_flight <= GUEST_BUF, "guest credit exceeded");
                }
                op::SHUTDOWN => shut = true,
                other => panic!("unexpected op {other}"),
            }
        }
        // The guest application reads what arrived; tell the muxer.
        if got.len() as u32 != consumed {
            consumed = got.len() as u32;
            g.send_credit(
                op::CREDIT_UPDATE,
                1024,
                FIRST_LOCAL_PORT,
                b"",
                0,
                consumed,
                GUEST_BUF,
            );
        }
    }
    writer.join().unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got == data);
}

#[test]
fn many_concurrent_host_connections() {
    const N: u32 = 50;
    let mut g = Guest::new();
    let mut clients: Vec<UnixStream> = (0..N)
        .map(|i| {
            let mut c = UnixStream::connect(g.path()).unwrap();
            c.write_all(format!("CONNECT {}\n", 2000 + i).as_bytes())
                .unwrap();
            c
        })
        .collect();
    let mut reqs = Vec::new();
    let start = Instant::now();
    while reqs.len() < N as usize && start.elapsed() < Duration::from_secs(5) {
        reqs.extend(
            g.pump(Duration::from_millis(20))
                .into_iter()
                .filter(|p| p.0.op == op::REQUEST),
        );
    }
    assert_eq!(reqs.len(), N as usize);
    for (h, _) in &reqs {
        g.send(op::RESPONSE, h.dst_port, h.src_port, b"");
        let msg = format!("hello {}", h.dst_port);
        g.send(op::RW, h.dst_port, h.src_port, msg.as_bytes());
    }
    let mut local_ports = std::collections::HashSet::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let ok = read_line(c);
        let port: u32 = ok.strip_prefix("OK ").unwrap().parse().unwrap();
        assert!(port >= FIRST_LOCAL_PORT);
        assert!(local_ports.insert(port), "local ports are unique");
        let want = format!("hello {}", 2000 + i);
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, want.as_bytes());
        c.write_all(format!("back {i}").as_bytes()).unwrap();
    }
    let mut back = std::collections::HashMap::new();
    let start = Instant::now();
    while back.len() < N as usize && start.elapsed() < Duration::from_secs(5) {
        for (h, d) in g.pump(Duration::from_millis(20)) {
            assert_eq!(h.op, op::RW);
            back.insert(h.dst_port, d);
        }
    }
    for i in 0..N {
        assert_eq!(back[&(2000 + i)], format!("back {i}").as_bytes());
    }
    assert_eq!(g.m.connection_count(), N as usize);
}
