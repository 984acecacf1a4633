//! Round trips of every message, framing limits and version negotiation.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;

use agent_protocol::oci_spec::runtime::{Process, Spec};
use agent_protocol::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: T) {
    let mut buf = Vec::new();
    write_frame(&mut buf, &msg).unwrap();
    let back: T = read_frame(&mut &buf[..]).unwrap();
    assert_eq!(back, msg);
}

fn sid(stream: StreamKind) -> StreamId {
    StreamId {
        container_id: "c1".into(),
        exec_id: Some("e1".into()),
        stream,
    }
}

#[test]
fn every_message_round_trips() {
    round_trip(Hello::new(Channel::Control));
    for k in [StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr] {
        round_trip(Hello::new(Channel::Stdio(sid(k))));
    }
    round_trip(HelloReply::Accepted { version: 1 });
    round_trip(HelloReply::Rejected(ErrorReply::new(
        ErrorCode::UnsupportedVersion,
        "no",
    )));

    let requests = vec![
        Request::Ping,
        Request::CreateSandbox(CreateSandbox {
            sandbox_id: "sb".into(),
            hostname: Some("h".into()),
            shares: vec![ShareMount {
                tag: "sandbox".into(),
                mount_point: "/run/sandbox-fs".into(),
            }],
        }),
        Request::CreateContainer(CreateContainer {
            container_id: "c1".into(),
            spec: Box::default(),
            rootfs: Rootfs::Directory {
                path: "/rootfs".into(),
            },
            stdio: StdioConfig::ALL,
        }),
        Request::CreateContainer(CreateContainer {
            container_id: "c2".into(),
            spec: Box::new(Spec::default()),
            rootfs: Rootfs::BlockDevice {
                serial: "rootfs".into(),
                fstype: "ext4".into(),
                options: vec!["noatime".into()],
            },
            stdio: StdioConfig::NONE,
        }),
        Request::StartContainer {
            container_id: "c1".into(),
        },
        Request::Exec(ExecProcess {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            process: Box::new(Process::default()),
            stdio: StdioConfig::OUTPUT,
        }),
        Request::Signal(SignalProcess {
            container_id: "c1".into(),
            exec_id: None,
            signal: 9,
            all: true,
        }),
        Request::Wait {
            container_id: "c1".into(),
            exec_id: Some("e1".into()),
        },
        Request::ListProcesses {
            container_id: "c1".into(),
        },
        Request::Stats {
            container_id: "c1".into(),
        },
        Request::UpdateContainer(Box::new(UpdateContainer {
            container_id: "c1".into(),
            resources: serde_json::from_value(serde_json::json!({
                "memory": {"limit": 33554432, "swap": 33554432},
                "cpu": {"quota": 50000, "period": 100000, "shares": 512, "cpus": "0-1"},
                "pids": {"limit": 64},
            }))
            .unwrap(),
        })),
        Request::RemoveContainer {
            container_id: "c1".into(),
            force: true,
        },
        Request::ResizeTty {
            container_id: "c1".into(),
            exec_id: None,
            rows: 24,
            cols: 80,
        },
        Request::SubscribeEvents,
        Request::WarmUp { threads: 8 },
        Request::PrepareInit(Box::default()),
        Request::Shutdown,
    ];
    for (i, request) in requests.into_iter().enumerate() {
        round_trip(RequestFrame {
            id: i as u64,
            request,
        });
    }

    let exit = ExitInfo {
        status: ExitStatus::Signal(9),
        oom_killed: true,
    };
    let responses = vec![
        Ok(Response::Done),
        Ok(Response::Pong {
            agent_version: "0.1.0".into(),
            rss_kib: 1234,
        }),
        Ok(Response::Process { pid: 42 }),
        Ok(Response::Exited(ExitInfo {
            status: ExitStatus::Code(3),
            oom_killed: false,
        })),
        Ok(Response::Exited(exit)),
        Ok(Response::Processes(vec![ProcessInfo {
            pid: 1,
            command: "sh".into(),
        }])),
        Ok(Response::Stats(ContainerStats {
            memory_usage: Some(1),
            memory_limit: None,
            oom_kills: Some(0),
            cpu_usage_ns: Some(5),
            pids_current: Some(2),
            pids_limit: Some(10),
        })),
        Err(ErrorReply::new(ErrorCode::NotFound, "no container c9")),
    ];
    for (i, result) in responses.into_iter().enumerate() {
        round_trip(ServerMessage::Reply {
            id: i as u64,
            result,
        });
    }
    round_trip(ServerMessage::Event(Event::Exit {
        container_id: "c1".into(),
        exec_id: None,
        exit,
    }));
    round_trip(ServerMessage::Error(ErrorReply::new(
        ErrorCode::BadFrame,
        "x",
    )));
}

#[test]
fn malformed_and_unknown_messages_are_rejected() {
    for body in [
        &b"not json"[..],
        b"{}",
        b"{\"id\":1,\"request\":\"launch_missiles\"}",
        b"{\"id\":1,\"request\":\"ping\",\"extra\":true}",
        b"",
    ] {
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(body);
        let err = read_frame::<_, RequestFrame>(&mut &buf[..]).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }
}

#[test]
fn oversized_frames_are_rejected() {
    let hdr = ((MAX_FRAME_LEN as u32) + 1).to_le_bytes();
    let err = read_frame::<_, RequestFrame>(&mut &hdr[..]).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }));
    let hdr = u32::MAX.to_le_bytes();
    assert!(matches!(
        read_frame::<_, RequestFrame>(&mut &hdr[..]),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn version_negotiation() {
    let mut h = Hello::new(Channel::Control);
    assert_eq!(negotiate(&h), Ok(PROTOCOL_VERSION));
    h.version = PROTOCOL_VERSION + 7;
    assert_eq!(negotiate(&h), Ok(PROTOCOL_VERSION));
    h.version = MIN_PROTOCOL_VERSION - 1;
    assert_eq!(
        negotiate(&h).unwrap_err().code,
        ErrorCode::UnsupportedVersion
    );
    let mut h = Hello::new(Channel::Control);
    h.magic = "http".into();
    assert_eq!(negotiate(&h).unwrap_err().code, ErrorCode::BadHandshake);
    // Version 2 (shares, disks by serial) is the oldest either side speaks.
    assert_eq!((MIN_PROTOCOL_VERSION, PROTOCOL_VERSION), (2, 2));
    h = Hello::new(Channel::Control);
    h.version = 1;
    let e = negotiate(&h).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    assert!(e.message.contains("version 1"), "{}", e.message);
}

#[test]
fn client_refuses_an_agent_that_picks_version_1() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let mut b = Stream::from(b);
        let _: Hello = read_frame(&mut b).unwrap();
        write_frame(&mut b, &HelloReply::Accepted { version: 1 }).unwrap();
    });
    let err = Client::from_stream(Stream::from(a)).unwrap_err();
    assert!(matches!(err, ClientError::Unexpected(_)), "{err}");
    server.join().unwrap();
}

#[test]
fn create_sandbox_without_shares_and_the_old_block_form() {
    let sb: CreateSandbox = serde_json::from_str(r#"{"sandbox_id":"s","hostname":null}"#).unwrap();
    assert!(sb.shares.is_empty());
    // A version-1 block rootfs (by path) is refused, not silently reinterpreted.
    let old = r#"{"block_device":{"path":"/dev/vdb","fstype":"ext4","options":[]}}"#;
    assert!(serde_json::from_str::<Rootfs>(old).is_err());
}

#[test]
fn a_malformed_request_is_answered_with_its_id_when_it_has_one() {
    match decode_request(br#"{"id":9,"request":{"nope":1}}"#) {
        Err(ServerMessage::Reply {
            id: 9,
            result: Err(e),
        }) => {
            assert_eq!(e.code, ErrorCode::BadFrame);
            assert!(
                e.message.starts_with("malformed request: "),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode_request(b"{nope"),
        Err(ServerMessage::Error(ErrorReply {
            code: ErrorCode::BadFrame,
            ..
        }))
    ));
    let ok = decode_request(br#"{"id":3,"request":"ping"}"#).unwrap();
    assert_eq!((ok.id, ok.request), (3, Request::Ping));
}

#[test]
fn client_reports_rejection_and_agent_errors() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let mut b = Stream::from(b);
        let hello: Hello = read_frame(&mut b).unwrap();
        assert_eq!(hello.channel, Channel::Control);
        write_frame(
            &mut b,
            &HelloReply::Accepted {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        let req: RequestFrame = read_frame(&mut b).unwrap();
        assert_eq!(req.request, Request::Ping);
        // An event first, then the reply.
        let ev = Event::Exit {
            container_id: "c".into(),
            exec_id: None,
            exit: ExitInfo {
                status: ExitStatus::Code(0),
                oom_killed: false,
            },
        };
        write_frame(&mut b, &ServerMessage::Event(ev)).unwrap();
        write_frame(
            &mut b,
            &ServerMessage::Reply {
                id: req.id,
                result: Ok(Response::Pong {
                    agent_version: "t".into(),
                    rss_kib: 0,
                }),
            },
        )
        .unwrap();
        let req: RequestFrame = read_frame(&mut b).unwrap();
        write_frame(
            &mut b,
            &ServerMessage::Reply {
                id: req.id,
                result: Err(ErrorReply::new(ErrorCode::NotFound, "no container x")),
            },
        )
        .unwrap();
    });
    let mut c = Client::from_stream(Stream::from(a)).unwrap();
    assert_eq!(c.ping().unwrap().version, "t");
    let err = c.stats("x").unwrap_err();
    assert_eq!(err.agent_error().unwrap().code, ErrorCode::NotFound);
    assert!(matches!(c.next_event().unwrap(), Event::Exit { .. }));
    server.join().unwrap();

    let (a, b) = UnixStream::pair().unwrap();
    let server = thread::spawn(move || {
        let mut b = Stream::from(b);
        let _: Hello = read_frame(&mut b).unwrap();
        write_frame(
            &mut b,
            &HelloReply::Rejected(ErrorReply::new(ErrorCode::UnsupportedVersion, "old")),
        )
        .unwrap();
    });
    let err = Client::from_stream(Stream::from(a)).unwrap_err();
    assert!(matches!(err, ClientError::Rejected(_)));
    server.join().unwrap();
}

#[test]
fn hybrid_vsock_connect() {
    let dir = std::env::temp_dir().join(format!("ap-hv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = thread::spawn(move || {
        for answer in [&b"OK 1073741824\nX"[..], b"NOPE\n"] {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = [0u8; 13];
            std::io::Read::read_exact(&mut s, &mut line).unwrap();
            assert_eq!(&line, b"CONNECT 1024\n");
            s.write_all(answer).unwrap();
        }
    });
    let ep = Endpoint::HybridVsock {
        path: path.clone(),
        port: AGENT_VSOCK_PORT,
    };
    let mut s = ep.connect().unwrap();
    let mut x = [0u8; 1];
    std::io::Read::read_exact(&mut s, &mut x).unwrap();
    assert_eq!(&x, b"X", "bytes after the OK line stay in the stream");
    assert!(matches!(
        ep.connect(),
        Err(TransportError::HybridConnect { .. })
    ));
    server.join().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn vsock_listener_binds() {
    // This host has no vsock transport to connect through, but binding shows
    // the AF_VSOCK address is built right.
    let ep = Endpoint::Vsock {
        cid: agent_protocol::transport::VMADDR_CID_ANY,
        port: 40_000 + std::process::id() % 20_000,
    };
    match ep.listen() {
        Ok(_) => {}
        Err(TransportError::Socket { cause, .. })
            if cause.raw_os_error() == Some(97 /* EAFNOSUPPORT */) =>
        {
            panic!("this kernel has no AF_VSOCK (load the vsock module): {cause}")
        }
        Err(e) => panic!("{e}"),
    }
}
