//! Bad requests and bad frames get error replies; the agent keeps serving.

mod common;

use std::io::{Read, Write};

use agent_protocol::{
    attach_stdio, read_frame, write_frame, Channel, Client, ErrorCode, Hello, HelloReply, Rootfs,
    ServerMessage, StdioConfig, StreamId, StreamKind, MAX_FRAME_LEN,
};
use common::*;

fn code(e: agent_protocol::ClientError) -> ErrorCode {
    e.agent_error()
        .unwrap_or_else(|| panic!("not an agent error: {e}"))
        .code
}

#[test]
fn bad_requests_get_errors_and_agent_keeps_serving() {
    let agent = Agent::start();
    let root = busybox_rootfs();
    let mut c = agent.client();

    assert_eq!(
        code(c.start_container("nope").unwrap_err()),
        ErrorCode::NotFound
    );
    assert_eq!(code(c.wait("nope", None).unwrap_err()), ErrorCode::NotFound);
    assert_eq!(
        code(c.signal("nope", None, 9, false).unwrap_err()),
        ErrorCode::NotFound
    );
    assert_eq!(code(c.stats("nope").unwrap_err()), ErrorCode::NotFound);

    // Missing rootfs.
    let mut req = create_req(
        "c-missing",
        spec(&["true"], "h", None),
        root.path(),
        StdioConfig::NONE,
    );
    req.rootfs = Rootfs::Directory {
        path: "/nonexistent/rootfs".into(),
    };
    let e = c.create_container(req).unwrap_err();
    assert_eq!(code(e), ErrorCode::NotFound);
    let mut req = create_req(
        "c-missing-dev",
        spec(&["true"], "h", None),
        root.path(),
        StdioConfig::NONE,
    );
    req.rootfs = Rootfs::BlockDevice {
        serial: "no-such-disk".into(),
        fstype: "ext4".into(),
        options: vec![],
    };
    let e = c.create_container(req).unwrap_err();
    let e = e.agent_error().unwrap();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message.contains("no disk with serial \"no-such-disk\""),
        "{}",
        e.message
    );

    // Invalid specs: no args, relative cwd, bad id, missing program.
    let e = c.create_container(create_req(
        "c-noargs",
        spec(&[], "h", None),
        root.path(),
        StdioConfig::NONE,
    ));
    assert_eq!(code(e.unwrap_err()), ErrorCode::InvalidArgument);
    let mut s = spec(&["true"], "h", None);
    let mut p = s.process().clone().unwrap();
    p.set_cwd("relative".into());
    s.set_process(Some(p));
    let e = c.create_container(create_req("c-cwd", s, root.path(), StdioConfig::NONE));
    assert_eq!(code(e.unwrap_err()), ErrorCode::InvalidArgument);
    let e = c.create_container(create_req(
        "../evil",
        spec(&["true"], "h", None),
        root.path(),
        StdioConfig::NONE,
    ));
    assert_eq!(code(e.unwrap_err()), ErrorCode::InvalidArgument);

    let id = unique("dup");
    c.create_container(create_req(
        &id,
        spec(&["/bin/no-such-program"], "h", None),
        root.path(),
        StdioConfig::NONE,
    ))
    .unwrap();
    let e = c.create_container(create_req(
        &id,
        spec(&["true"], "h", None),
        root.path(),
        StdioConfig::NONE,
    ));
    assert_eq!(code(e.unwrap_err()), ErrorCode::AlreadyExists);
    let e = c.start_container(&id).unwrap_err();
    assert!(e.to_string().contains("no-such-program"), "{e}");
    assert_eq!(
        code(c.start_container(&id).unwrap_err()),
        ErrorCode::InvalidState
    );
    c.remove_container(&id, true).unwrap();

    // Stdio attach to something unknown is refused in the handshake.
    let sid = StreamId {
        container_id: "nope".into(),
        exec_id: None,
        stream: StreamKind::Stdout,
    };
    assert_eq!(
        code(attach_stdio(&agent.endpoint, sid).unwrap_err()),
        ErrorCode::NotFound
    );

    let info = c.ping().unwrap();
    assert!(!info.version.is_empty());
    assert!(info.rss_kib > 0, "the agent reports its RSS");
}

fn raw_control(agent: &Agent) -> agent_protocol::Stream {
    let mut s = agent.endpoint.connect().unwrap();
    write_frame(&mut s, &Hello::new(Channel::Control)).unwrap();
    assert!(matches!(
        read_frame::<_, HelloReply>(&mut s).unwrap(),
        HelloReply::Accepted {
            version: agent_protocol::PROTOCOL_VERSION
        }
    ));
    s
}

#[test]
fn malformed_and_oversized_frames_and_versions() {
    let agent = Agent::start();

    // Malformed JSON: an error reply, and the connection stays usable.
    let mut s = raw_control(&agent);
    let body = br#"{"id":7,"request":"launch_missiles"}"#;
    s.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    s.write_all(body).unwrap();
    match read_frame::<_, ServerMessage>(&mut s).unwrap() {
        ServerMessage::Reply {
            id: 7,
            result: Err(e),
        } => assert_eq!(e.code, ErrorCode::BadFrame),
        m => panic!("unexpected {m:?}"),
    }
    s.write_all(&3u32.to_le_bytes()).unwrap();
    s.write_all(b"{{{").unwrap();
    assert!(
        matches!(read_frame::<_, ServerMessage>(&mut s).unwrap(), ServerMessage::Error(e) if e.code == ErrorCode::BadFrame)
    );
    let mut c = Client::from_stream(agent.endpoint.connect().unwrap()).unwrap();
    c.ping().unwrap();

    // Oversized: error, then the connection is closed.
    let mut s = raw_control(&agent);
    s.write_all(&((MAX_FRAME_LEN as u32) + 1).to_le_bytes())
        .unwrap();
    assert!(
        matches!(read_frame::<_, ServerMessage>(&mut s).unwrap(), ServerMessage::Error(e) if e.code == ErrorCode::FrameTooLarge)
    );
    let mut rest = vec![];
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());

    // Version too old, bad magic, garbage hello.
    let mut s = agent.endpoint.connect().unwrap();
    let mut h = Hello::new(Channel::Control);
    h.version = 1;
    write_frame(&mut s, &h).unwrap();
    assert!(
        matches!(read_frame::<_, HelloReply>(&mut s).unwrap(), HelloReply::Rejected(e) if e.code == ErrorCode::UnsupportedVersion)
    );
    let mut s = agent.endpoint.connect().unwrap();
    let mut h = Hello::new(Channel::Control);
    h.magic = "GET / HTTP/1.1".into();
    write_frame(&mut s, &h).unwrap();
    assert!(
        matches!(read_frame::<_, HelloReply>(&mut s).unwrap(), HelloReply::Rejected(e) if e.code == ErrorCode::BadHandshake)
    );
    let mut s = agent.endpoint.connect().unwrap();
    s.write_all(b"\x05\x00\x00\x00hello").unwrap();
    assert!(
        matches!(read_frame::<_, HelloReply>(&mut s).unwrap(), HelloReply::Rejected(e) if e.code == ErrorCode::BadHandshake)
    );

    // Still serving.
    c.ping().unwrap();
    agent.client().ping().unwrap();
}

#[test]
fn shutdown_request_stops_the_agent() {
    let mut agent = Agent::start();
    let mut c = agent.client();
    c.shutdown().unwrap();
    let status = agent.child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn create_sandbox_share_errors_are_clear() {
    let agent = Agent::start();
    let mut c = agent.client();
    let mp = agent.dir.path().join("share");
    let share = |tag: &str, mp: &str| agent_protocol::ShareMount {
        tag: tag.into(),
        mount_point: mp.into(),
    };
    let sb = |shares| agent_protocol::CreateSandbox {
        sandbox_id: "sb".into(),
        hostname: None,
        shares,
    };
    // No virtio-fs device with this tag on this host.
    let e = c
        .create_sandbox(sb(vec![share("no-such-tag", mp.to_str().unwrap())]))
        .unwrap_err();
    let e = e.agent_error().unwrap();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(
        e.message
            .starts_with("cannot mount virtio-fs share \"no-such-tag\" on "),
        "{}",
        e.message
    );
    let e = c
        .create_sandbox(sb(vec![share("t", "relative/dir")]))
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::InvalidArgument);
    // Nothing was recorded: the agent still takes a sandbox without shares.
    c.create_sandbox(sb(vec![])).unwrap();
    c.ping().unwrap();
}

/// A host-test agent (not the guest's init) refuses to reseed and re-clock its host.
#[test]
fn clone_identity_is_refused_outside_the_guest_init() {
    let agent = Agent::start();
    let mut c = agent.client();
    let id = agent_protocol::clone::CloneIdentity {
        entropy: vec![1; agent_protocol::clone::CLONE_ENTROPY_BYTES],
        realtime_ns: 1_800_000_000 * 1_000_000_000,
        hostname: "clone-1".into(),
    };
    assert_eq!(
        code(c.clone_identity(id).unwrap_err()),
        ErrorCode::InvalidState
    );
    c.ping().unwrap();
}
