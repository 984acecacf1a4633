//! Fuzzing entry points for the protocol decoder, driven from both ends, shared by the
//! cargo-fuzz targets (`agent-protocol/fuzz/`) and bounded random-input unit tests.
//! Compiled only for tests and with the `fuzz` feature.
//!
//! - [`agent_side`]: the bytes a hostile host sends to the agent's server: a hello, then
//!   request frames, read exactly as the agent reads them (`read_frame`, [`negotiate`],
//!   `read_frame_bytes` + [`decode_request`]); every answer the agent would send must
//!   encode.
//! - [`client_side`]: the bytes a hostile agent sends to the host's [`Client`]: the hello
//!   reply, then replies, events and errors, consumed by the real client calls over a
//!   socketpair.
//!
//! Neither may panic, hang or allocate more than a frame's limit, whatever the input.

use std::io::Write;
use std::os::unix::net::UnixStream;

use crate::client::{handshake, Client, ClientError};
use crate::frame::{encode_frame, read_frame, read_frame_bytes, FrameError, MAX_FRAME_LEN};
use crate::id::validate_container_id;
use crate::messages::{
    decode_request, negotiate, Channel, CreateSandbox, Hello, HelloReply, Request, StreamId,
    StreamKind,
};

/// What the agent checks on a decoded request before acting on it.
fn agent_checks(request: &Request) {
    let id = match request {
        Request::CreateContainer(c) => &c.container_id,
        Request::Exec(e) => {
            let _ = validate_container_id(&e.exec_id);
            &e.container_id
        }
        Request::StartContainer { container_id }
        | Request::Wait { container_id, .. }
        | Request::ListProcesses { container_id }
        | Request::Stats { container_id }
        | Request::RemoveContainer { container_id, .. }
        | Request::ResizeTty { container_id, .. } => container_id,
        Request::Signal(s) => &s.container_id,
        Request::UpdateContainer(u) => &u.container_id,
        _ => return,
    };
    let _ = validate_container_id(id);
}

/// One connection's worth of bytes from a hostile host, read as the agent's server does.
pub fn agent_side(data: &[u8]) {
    let mut r = data;
    match read_frame::<_, Hello>(&mut r) {
        Ok(hello) => {
            let reply = match negotiate(&hello) {
                Ok(version) => HelloReply::Accepted { version },
                Err(e) => HelloReply::Rejected(e),
            };
            encode_frame(&reply).expect("the agent can always answer a hello");
            if let Channel::Stdio(id) = &hello.channel {
                let _ = validate_container_id(&id.container_id);
            }
        }
        // The agent rejects the connection; go on reading to reach the request decoder.
        Err(e) if e.is_recoverable() => {}
        Err(_) => return,
    }
    loop {
        let body = match read_frame_bytes(&mut r, MAX_FRAME_LEN) {
            Ok(b) => b,
            Err(_) => return,
        };
        match decode_request(&body) {
            Ok(frame) => agent_checks(&frame.request),
            Err(answer) => {
                encode_frame(&answer).expect("the agent can always answer a bad frame");
            }
        }
    }
}

/// Largest input [`client_side`] feeds through the socketpair (it must fit in the socket
/// buffer, or the write would block with nobody reading).
const CLIENT_INPUT_MAX: usize = 64 * 1024;

/// One connection's worth of bytes from a hostile agent, consumed by the real client.
pub fn client_side(data: &[u8]) {
    let data = &data[..data.len().min(CLIENT_INPUT_MAX)];
    let (ours, mut agent) = UnixStream::pair().expect("socketpair");
    agent.write_all(data).expect("input fits the socket buffer");
    // EOF after the input: every read past it ends instead of blocking.
    agent.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut stream = crate::transport::Stream::from(ours);
    // The first byte picks the channel, as a stdio attach or a control client.
    if data.first().is_some_and(|b| b & 1 == 1) {
        let sid = StreamId {
            container_id: "c".into(),
            exec_id: None,
            stream: StreamKind::Stdout,
        };
        let _ = handshake(&mut stream, Channel::Stdio(sid));
        return;
    }
    let Ok(mut client) = Client::from_stream(stream) else {
        return;
    };
    for step in 0..64u32 {
        let r = match step % 8 {
            0 => client.ping().map(drop),
            1 => client.list_processes("c").map(drop),
            2 => client.stats("c").map(drop),
            3 => client.wait("c", Some("e")).map(drop),
            4 => client.create_sandbox(CreateSandbox::default()),
            5 => client.next_event().map(drop),
            6 => client
                .exec("c", "e", Default::default(), crate::StdioConfig::NONE)
                .map(drop),
            _ => client.shutdown(),
        };
        if let Err(ClientError::Frame(FrameError::Closed | FrameError::Io(_))) = r {
            return;
        }
    }
}

/// Every message a well-behaved host could send: seeds for the mutation test.
#[cfg(test)]
fn host_seed() -> Vec<u8> {
    use crate::messages::*;
    let mut out = encode_frame(&Hello::new(Channel::Control)).unwrap();
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_hostname(Some("h".into()));
    let requests = [
        Request::Ping,
        Request::CreateSandbox(CreateSandbox {
            sandbox_id: "s".into(),
            hostname: None,
            shares: vec![ShareMount {
                tag: "sandbox".into(),
                mount_point: "/run/s".into(),
            }],
        }),
        Request::CreateContainer(CreateContainer {
            container_id: "c".into(),
            spec: Box::new(spec),
            rootfs: Rootfs::BlockDevice {
                serial: "rootfs".into(),
                fstype: "ext4".into(),
                options: vec![],
            },
            stdio: StdioConfig::ALL,
        }),
        Request::Wait {
            container_id: "c".into(),
            exec_id: None,
        },
    ];
    for (id, request) in requests.into_iter().enumerate() {
        let f = RequestFrame {
            id: id as u64,
            request,
        };
        out.extend(encode_frame(&f).unwrap());
    }
    out
}

/// Everything a well-behaved agent could answer, in the order the client asks.
#[cfg(test)]
fn agent_seed() -> Vec<u8> {
    use crate::messages::*;
    let mut out = encode_frame(&HelloReply::Accepted { version: 2 }).unwrap();
    let msgs = [
        ServerMessage::Reply {
            id: 1,
            result: Ok(Response::Pong {
                agent_version: "1".into(),
                rss_kib: 1,
            }),
        },
        ServerMessage::Event(Event::Exit {
            container_id: "c".into(),
            exec_id: None,
            exit: ExitInfo {
                status: ExitStatus::Signal(9),
                oom_killed: true,
            },
        }),
        ServerMessage::Reply {
            id: 2,
            result: Ok(Response::Processes(vec![ProcessInfo {
                pid: 1,
                command: "sh".into(),
            }])),
        },
        ServerMessage::Error(ErrorReply::new(ErrorCode::BadFrame, "x")),
    ];
    for m in msgs {
        out.extend(encode_frame(&m).unwrap());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::ServerMessage;

    /// xorshift64*: a dependency-free, reproducible input generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Valid traffic with random bytes overwritten, inserted, or cut off.
    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(v.len());
            match rng.below(4) {
                0 => v[at] = rng.next() as u8,
                1 => v.insert(at, b"{}[]\":,0-9ae\\"[rng.below(13)]),
                2 => {
                    v.remove(at);
                }
                _ => v.truncate(at),
            }
            if v.is_empty() {
                break;
            }
        }
        v
    }

    #[test]
    fn mutated_traffic_from_both_ends_never_panics() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (host, agent) = (host_seed(), agent_seed());
        agent_side(&host);
        client_side(&agent);
        for _ in 0..1500 {
            agent_side(&mutate(&mut rng, &host));
            client_side(&mutate(&mut rng, &agent));
        }
        for _ in 0..300 {
            let n = rng.below(300);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            agent_side(&junk);
            client_side(&junk);
        }
    }

    /// JSON nested to serde_json's recursion limit inside a field the OCI types skip, on a
    /// thread with the agent's connection stack size, in the build profile under test.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            "{{\"id\":7,\"request\":{{\"create_container\":{{\"container_id\":\"c\",\"spec\":{{\"x\":{}{}}}}}}}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let t = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || decode_request(deep.as_bytes()).map(drop))
            .unwrap();
        match t.join().unwrap() {
            Err(ServerMessage::Reply { id: 7, .. }) | Err(ServerMessage::Error(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
