//! Muxer and connection tests against [`TestBackend`]: no VM, no sockets.

use std::time::Duration;

use super::backend::StreamId;
use super::connection::CONN_BUF_ALLOC;
use super::muxer::{Muxer, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS};
use super::packet::{op, VsockHeader, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::test_backend::TestBackend;

const CID: u64 = 3;
const GUEST_BUF: u32 = 64 * 1024;

fn muxer() -> Muxer<TestBackend> {
    let mut b = TestBackend::new();
    b.listening.insert(5000);
    Muxer::new(CID, b)
}

/// A guest packet from guest port `src` to host port `dst`.
fn pkt(op: u16, src: u32, dst: u32) -> VsockHeader {
    VsockHeader {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF,
        fwd_cnt: 0,
    }
}

fn send(m: &mut Muxer<TestBackend>, hdr: VsockHeader, data: &[u8]) {
    let hdr = VsockHeader {
        len: data.len() as u32,
        ..hdr
    };
    m.send_pkt(&hdr, data);
}

/// Everything the guest would receive now, with RX buffers of `cap` payload bytes.
fn recv_with(m: &mut Muxer<TestBackend>, cap: usize) -> Vec<(VsockHeader, Vec<u8>)> {
    m.process_backend();
    let mut out = Vec::new();
    let mut buf = vec![0u8; cap];
    while let Some((h, n)) = m.recv_pkt(&mut buf) {
        assert_eq!(h.len as usize, n);
        assert_eq!(h.dst_cid, CID);
        if h.op != op::RST {
            assert_eq!((h.src_cid, h.type_), (HOST_CID, TYPE_STREAM));
        }
        out.push((h, buf[..n].to_vec()));
        assert!(out.len() < 100_000, "muxer produces packets forever");
    }
    out
}

fn recv(m: &mut Muxer<TestBackend>) -> Vec<(VsockHeader, Vec<u8>)> {
    recv_with(m, 4096)
}

fn ops(pkts: &[(VsockHeader, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|p| p.0.op).collect()
}

/// Guest port 1234 connects to host port 5000; returns the host stream.
fn guest_connect(m: &mut Muxer<TestBackend>, guest_port: u32) -> StreamId {
    send(m, pkt(op::REQUEST, guest_port, 5000), &[]);
    let r = recv(m);
    assert_eq!(ops(&r), [op::RESPONSE]);
    assert_eq!((r[0].0.src_port, r[0].0.dst_port), (5000, guest_port));
    assert_eq!(r[0].0.buf_alloc, CONN_BUF_ALLOC);
    *m.backend().streams_to(5000).last().unwrap()
}

#[test]
fn guest_to_host_handshake_and_data_both_ways() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    send(&mut m, pkt(op::RW, 1234, 5000), b"hello");
    assert_eq!(m.backend_mut().stream(s).received, b"hello");

    m.backend_mut().host_send(s, b"world");
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::RW]);
    assert_eq!(r[0].1, b"world");
    assert_eq!(
        r[0].0.fwd_cnt, 5,
        "our fwd_cnt counts bytes handed to the host"
    );
    assert!(recv(&mut m).is_empty());
}

#[test]
fn refused_guest_connection_gets_rst() {
    let mut m = muxer();
    send(&mut m, pkt(op::REQUEST, 1234, 6000), &[]);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::RST]);
    assert_eq!((r[0].0.src_port, r[0].0.dst_port), (6000, 1234));
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn host_to_guest_handshake_and_data() {
    let mut m = muxer();
    let s = m.backend_mut().host_connect(1024);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::REQUEST]);
    assert_eq!((r[0].0.src_port, r[0].0.dst_port), (FIRST_LOCAL_PORT, 1024));
    assert_eq!(m.backend_mut().stream(s).confirmed, None);

    send(&mut m, pkt(op::RESPONSE, 1024, FIRST_LOCAL_PORT), &[]);
    assert_eq!(m.backend_mut().stream(s).confirmed, Some(FIRST_LOCAL_PORT));

    m.backend_mut().host_send(s, b"ping");
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::RW]);
    assert_eq!(r[0].1, b"ping");
    send(&mut m, pkt(op::RW, 1024, FIRST_LOCAL_PORT), b"pong");
    assert_eq!(m.backend_mut().stream(s).received, b"pong");

    // A second host connection gets the next local port.
    m.backend_mut().host_connect(1024);
    let r = recv(&mut m);
    assert_eq!(r[0].0.src_port, FIRST_LOCAL_PORT + 1);
}

#[test]
fn guest_refusing_host_connection_closes_the_host_stream() {
    let mut m = muxer();
    let s = m.backend_mut().host_connect(1024);
    recv(&mut m);
    send(&mut m, pkt(op::RST, 1024, FIRST_LOCAL_PORT), &[]);
    assert!(recv(&mut m).is_empty(), "no RST in answer to RST");
    assert!(m.backend_mut().stream(s).closed);
    assert_eq!(m.backend_mut().stream(s).confirmed, None);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn guest_not_answering_host_connection_times_out() {
    let mut m = muxer();
    m.set_timeout(Duration::from_millis(20));
    let s = m.backend_mut().host_connect(1024);
    assert_eq!(ops(&recv(&mut m)), [op::REQUEST]);
    assert!(m.backend().timer.is_some());
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert!(m.backend_mut().stream(s).closed);
    assert_eq!(m.connection_count(), 0);
    assert!(m.backend().timer.is_none());
}

#[test]
fn host_data_respects_guest_credit() {
    let mut m = muxer();
    let s = m.backend_mut().host_connect(1024);
    recv(&mut m);
    let mut resp = pkt(op::RESPONSE, 1024, FIRST_LOCAL_PORT);
    resp.buf_alloc = 100;
    send(&mut m, resp, &[]);
    m.backend_mut().host_send(s, &[7u8; 300]);

    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::RW]);
    assert_eq!(r[0].1.len(), 100, "never more than the guest has room for");
    assert!(recv(&mut m).is_empty());
    // No credit: the muxer stops asking for readable events instead of spinning.
    m.backend_mut().host_send(s, b"more");
    assert!(recv(&mut m).is_empty());

    // The guest consumed 60 bytes.
    let mut upd = pkt(op::CREDIT_UPDATE, 1024, FIRST_LOCAL_PORT);
    upd.buf_alloc = 100;
    upd.fwd_cnt = 60;
    send(&mut m, upd, &[]);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::RW]);
    assert_eq!(r[0].1.len(), 60);

    // The guest enlarged its buffer: the rest flows, in buffer-sized pieces.
    upd.buf_alloc = 1 << 20;
    upd.fwd_cnt = 160;
    send(&mut m, upd, &[]);
    let r = recv_with(&mut m, 64);
    let total: usize = r.iter().map(|p| p.1.len()).sum();
    assert_eq!(total, 144);
    assert!(r.iter().all(|p| p.1.len() <= 64));
}

#[test]
fn lying_guest_credit_gets_no_data() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().host_send(s, b"abc");
    let mut upd = pkt(op::CREDIT_UPDATE, 1234, 5000);
    upd.fwd_cnt = 1000; // more than we ever sent
    upd.buf_alloc = 10;
    send(&mut m, upd, &[]);
    assert!(recv(&mut m).is_empty());
}

#[test]
fn guest_data_is_buffered_when_host_is_slow_and_credit_is_updated() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().stream(s).write_room = Some(10);
    let chunk = vec![1u8; MAX_PKT_DATA];
    for _ in 0..(CONN_BUF_ALLOC as usize / MAX_PKT_DATA) {
        send(&mut m, pkt(op::RW, 1234, 5000), &chunk);
    }
    assert_eq!(m.backend_mut().stream(s).received.len(), 10);
    assert!(recv(&mut m).is_empty(), "nothing freed worth telling yet");

    // The host reads everything: the guest learns about the freed space.
    m.backend_mut().stream(s).write_room = None;
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::CREDIT_UPDATE]);
    assert_eq!(r[0].0.fwd_cnt, CONN_BUF_ALLOC);
    assert_eq!(
        m.backend_mut().stream(s).received.len(),
        CONN_BUF_ALLOC as usize
    );
}

#[test]
fn guest_exceeding_our_credit_is_reset() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().stream(s).write_room = Some(0);
    let chunk = vec![1u8; MAX_PKT_DATA];
    for _ in 0..(CONN_BUF_ALLOC as usize / MAX_PKT_DATA) {
        send(&mut m, pkt(op::RW, 1234, 5000), &chunk);
    }
    assert!(recv(&mut m).is_empty());
    send(&mut m, pkt(op::RW, 1234, 5000), b"x");
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert!(m.backend_mut().stream(s).closed);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn credit_request_is_answered() {
    let mut m = muxer();
    guest_connect(&mut m, 1234);
    send(&mut m, pkt(op::RW, 1234, 5000), b"12345");
    send(&mut m, pkt(op::CREDIT_REQUEST, 1234, 5000), &[]);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::CREDIT_UPDATE]);
    assert_eq!((r[0].0.buf_alloc, r[0].0.fwd_cnt), (CONN_BUF_ALLOC, 5));
}

#[test]
fn guest_close_flushes_then_resets() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().stream(s).write_room = Some(3);
    send(&mut m, pkt(op::RW, 1234, 5000), b"goodbye");
    let mut shut = pkt(op::SHUTDOWN, 1234, 5000);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    send(&mut m, shut, &[]);
    assert!(recv(&mut m).is_empty(), "buffered bytes first");
    assert!(!m.backend_mut().stream(s).closed);

    m.backend_mut().stream(s).write_room = None;
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert_eq!(m.backend_mut().stream(s).received, b"goodbye");
    assert!(m.backend_mut().stream(s).closed);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn guest_half_close_shuts_host_write_side() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    let mut shut = pkt(op::SHUTDOWN, 1234, 5000);
    shut.flags = SHUTDOWN_SEND;
    send(&mut m, shut, &[]);
    assert!(m.backend_mut().stream(s).write_shut);
    // The host can still answer.
    m.backend_mut().host_send(s, b"reply");
    let r = recv(&mut m);
    assert_eq!(r[0].1, b"reply");
    // Data after the guest's own SHUTDOWN(SEND) is a protocol error.
    send(&mut m, pkt(op::RW, 1234, 5000), b"late");
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
}

#[test]
fn host_close_drains_then_shuts_down_and_waits_for_guest_rst() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().host_send(s, b"last words");
    m.backend_mut().host_close(s);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::RW, op::SHUTDOWN]);
    assert_eq!(r[0].1, b"last words");
    assert_eq!(r[1].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(m.connection_count(), 1);
    send(&mut m, pkt(op::RST, 1234, 5000), &[]);
    assert!(recv(&mut m).is_empty());
    assert!(m.backend_mut().stream(s).closed);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn host_close_resets_if_guest_never_answers() {
    let mut m = muxer();
    m.set_timeout(Duration::from_millis(20));
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().host_close(s);
    assert_eq!(ops(&recv(&mut m)), [op::SHUTDOWN]);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn host_half_close_sends_shutdown_send_only() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().host_shutdown(s);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::SHUTDOWN]);
    assert_eq!(r[0].0.flags, SHUTDOWN_SEND);
    send(&mut m, pkt(op::RW, 1234, 5000), b"still");
    assert_eq!(m.backend_mut().stream(s).received, b"still");
    let mut shut = pkt(op::SHUTDOWN, 1234, 5000);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    send(&mut m, shut, &[]);
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn host_half_close_then_close_completes_the_shutdown() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().host_shutdown(s);
    assert_eq!(recv(&mut m)[0].0.flags, SHUTDOWN_SEND);
    m.backend_mut().host_close(s);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::SHUTDOWN]);
    assert_eq!(r[0].0.flags, SHUTDOWN_RCV);
    send(&mut m, pkt(op::RST, 1234, 5000), &[]);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn host_hangup_with_undelivered_guest_data_resets() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.backend_mut().stream(s).write_room = Some(0);
    send(&mut m, pkt(op::RW, 1234, 5000), b"stuck");
    m.backend_mut().host_close(s);
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn host_hangup_before_guest_accepts() {
    let mut m = muxer();
    let s = m.backend_mut().host_connect(1024);
    assert_eq!(ops(&recv(&mut m)), [op::REQUEST]);
    m.backend_mut().host_close(s);
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    // Gone before the REQUEST was even delivered: the guest never hears of it.
    let s = m.backend_mut().host_connect(1024);
    m.backend_mut().host_close(s);
    assert!(recv(&mut m).is_empty());
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn packets_for_unknown_connections_get_rst() {
    let mut m = muxer();
    for o in [
        op::RW,
        op::SHUTDOWN,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
        op::RESPONSE,
        99,
    ] {
        send(&mut m, pkt(o, 1, 2), b"");
        let r = recv(&mut m);
        assert_eq!(ops(&r), [op::RST], "op {o}");
        assert_eq!((r[0].0.src_port, r[0].0.dst_port), (2, 1));
    }
    send(&mut m, pkt(op::RST, 1, 2), b"");
    assert!(recv(&mut m).is_empty());
}

#[test]
fn bad_cids_and_types_are_rejected() {
    let mut m = muxer();
    let mut p = pkt(op::REQUEST, 1234, 5000);
    p.src_cid = 4;
    send(&mut m, p, &[]);
    assert!(recv(&mut m).is_empty(), "forged source CID is dropped");
    let mut p = pkt(op::REQUEST, 1234, 5000);
    p.type_ = 2; // SEQPACKET
    send(&mut m, p, &[]);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::RST]);
    assert_eq!(r[0].0.type_, 2);
    let mut p = pkt(op::REQUEST, 1234, 5000);
    p.dst_cid = 7;
    send(&mut m, p, &[]);
    let r = recv(&mut m);
    assert_eq!(ops(&r), [op::RST]);
    assert_eq!(r[0].0.src_cid, 7);
    assert_eq!(m.connection_count(), 0);
    assert!(m.backend().streams.is_empty());
}

#[test]
fn protocol_violations_reset_the_connection() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    send(&mut m, pkt(op::REQUEST, 1234, 5000), &[]);
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert!(m.backend_mut().stream(s).closed);

    let s = guest_connect(&mut m, 1234);
    send(&mut m, pkt(op::RESPONSE, 1234, 5000), &[]);
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert!(m.backend_mut().stream(s).closed);

    // Data before accepting a host connection.
    let s = m.backend_mut().host_connect(1024);
    recv(&mut m);
    send(&mut m, pkt(op::RW, 1024, FIRST_LOCAL_PORT), b"early");
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert!(m.backend_mut().stream(s).closed);
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn unusable_packet_resets_its_connection() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    m.guest_error(&pkt(op::RW, 1234, 5000));
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    assert!(m.backend_mut().stream(s).closed);
    // For no connection: a plain RST.
    m.guest_error(&pkt(op::RW, 1, 2));
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
}

#[test]
fn many_concurrent_streams_up_to_the_cap() {
    let mut m = muxer();
    for port in 0..MAX_CONNECTIONS as u32 {
        send(&mut m, pkt(op::REQUEST, 10_000 + port, 5000), &[]);
    }
    let r = recv(&mut m);
    assert_eq!(r.len(), MAX_CONNECTIONS);
    assert!(r.iter().all(|p| p.0.op == op::RESPONSE));
    assert_eq!(m.connection_count(), MAX_CONNECTIONS);

    send(&mut m, pkt(op::REQUEST, 9999, 5000), &[]);
    assert_eq!(ops(&recv(&mut m)), [op::RST]);
    let h = m.backend_mut().host_connect(1024);
    assert!(recv(&mut m).is_empty());
    assert!(m.backend_mut().stream(h).closed);

    // Every stream carries its own data, both ways, served round-robin.
    let streams = m.backend().streams_to(5000);
    assert_eq!(streams.len(), MAX_CONNECTIONS);
    for (i, &s) in streams.iter().enumerate() {
        m.backend_mut().host_send(s, format!("to {i}").as_bytes());
        send(
            &mut m,
            pkt(op::RW, 10_000 + i as u32, 5000),
            format!("from {i}").as_bytes(),
        );
    }
    let r = recv(&mut m);
    assert_eq!(r.len(), MAX_CONNECTIONS);
    for (h, data) in &r {
        assert_eq!(data, format!("to {}", h.dst_port - 10_000).as_bytes());
    }
    for (i, &s) in streams.iter().enumerate() {
        assert_eq!(
            m.backend_mut().stream(s).received,
            format!("from {i}").as_bytes()
        );
    }

    // Closing one makes room for another.
    send(&mut m, pkt(op::RST, 10_000, 5000), &[]);
    send(&mut m, pkt(op::REQUEST, 9999, 5000), &[]);
    assert_eq!(ops(&recv(&mut m)), [op::RESPONSE]);
}

#[test]
fn loose_rsts_are_bounded() {
    let mut m = muxer();
    for port in 0..100_000 {
        send(&mut m, pkt(op::RW, port, 7), b"");
    }
    let r = recv(&mut m);
    assert!(!r.is_empty() && r.len() <= 256, "{}", r.len());
}

#[test]
fn reset_forgets_everything_and_closes_host_streams() {
    let mut m = muxer();
    let s = guest_connect(&mut m, 1234);
    let h = m.backend_mut().host_connect(1024);
    m.process_backend();
    send(&mut m, pkt(op::RW, 1, 2), b"");
    m.reset();
    assert_eq!(m.connection_count(), 0);
    assert!(!m.has_pending_rx());
    assert!(m.backend_mut().stream(s).closed);
    assert!(m.backend_mut().stream(h).closed);
    // Usable again afterwards.
    guest_connect(&mut m, 1234);
}
