//! Connection handling: handshake, the control request loop, stdio streams.
//!
//! One thread per connection. On a control connection requests are handled
//! in order, except Wait, which gets its own thread so that a blocked wait
//! does not hold up other requests; replies carry the request id and share
//! the connection's writer with events.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_protocol::frame::read_frame_bytes;
use agent_protocol::{
    decode_request, negotiate, read_frame, write_frame, Channel, ErrorCode, ErrorReply, FrameError,
    Hello, HelloReply, Listener, Request, RequestFrame, ServerMessage, Stream, StreamId,
    StreamKind, MAX_FRAME_LEN,
};

use crate::agent::{After, Agent};
use crate::stdio::{serve_input, serve_output};

/// Handshake must complete within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections forever.
pub fn serve(listener: Listener, agent: Arc<Agent>) -> io::Error {
    loop {
        let stream = match listener.accept() {
            Ok(s) => s,
            // E.g. EMFILE: back off rather than spin.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let agent = agent.clone();
        if let Err(e) = crate::pool::run(move || handle_conn(&agent, stream)) {
            return e;
        }
    }
}

fn reject(stream: &mut Stream, code: ErrorCode, msg: String) {
    let _ = write_frame(stream, &HelloReply::Rejected(ErrorReply::new(code, msg)));
}

fn handle_conn(agent: &Arc<Agent>, mut stream: Stream) {
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let hello: Hello = match read_frame(&mut stream) {
        Ok(h) => h,
        Err(FrameError::Malformed(e)) => {
            return reject(
                &mut stream,
                ErrorCode::BadHandshake,
                format!("bad hello: {e}"),
            )
        }
        Err(e @ FrameError::TooLarge { .. }) => {
            return reject(&mut stream, ErrorCode::FrameTooLarge, e.to_string())
        }
        Err(_) => return,
    };
    let version = match negotiate(&hello) {
        Ok(v) => v,
        Err(e) => {
            let _ = write_frame(&mut stream, &HelloReply::Rejected(e));
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    match hello.channel {
        Channel::Control => {
            if write_frame(&mut stream, &HelloReply::Accepted { version }).is_ok() {
                control_loop(agent, stream);
            }
        }
        Channel::Stdio(id) => stdio_conn(agent, stream, id, version),
    }
}

fn stdio_conn(agent: &Agent, mut stream: Stream, id: StreamId, version: u32) {
    let (proc, fd) = match agent.take_stream(&id) {
        Ok(x) => x,
        Err(e) => {
            let _ = write_frame(&mut stream, &HelloReply::Rejected(e));
            return;
        }
    };
    if write_frame(&mut stream, &HelloReply::Accepted { version }).is_err() {
        // The client is gone; keep draining output so the process's exit
        // is still reported.
        let _ = stream.shutdown();
    }
    match id.stream {
        StreamKind::Stdin => serve_input(&proc, fd, stream),
        StreamKind::Stdout | StreamKind::Stderr => serve_output(&proc, fd, stream),
    }
}

fn send(writer: &Mutex<Stream>, msg: &ServerMessage) -> bool {
    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
    write_frame(&mut *w, msg).is_ok()
}

fn control_loop(agent: &Arc<Agent>, mut reader: Stream) {
    let writer = match reader.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(_) => return,
    };
    loop {
        let body = match read_frame_bytes(&mut reader, MAX_FRAME_LEN) {
            Ok(b) => b,
            Err(e @ FrameError::TooLarge { .. }) => {
                // The stream cannot be resynchronised: report and close.
                send(
                    &writer,
                    &ServerMessage::Error(ErrorReply::new(ErrorCode::FrameTooLarge, e.to_string())),
                );
                let _ = reader.shutdown();
                return;
            }
            Err(_) => return,
        };
        let RequestFrame { id, request } = match decode_request(&body) {
            Ok(f) => f,
            Err(msg) => {
                if !send(&writer, &msg) {
                    return;
                }
                continue;
            }
        };
        match request {
            Request::Wait { .. } => {
                let (agent2, writer2) = (agent.clone(), writer.clone());
                let spawned = crate::pool::run(move || {
                    let (result, _) = agent2.handle(request);
                    send(&writer2, &ServerMessage::Reply { id, result });
                });
                if spawned.is_err() {
                    let err = ErrorReply::new(ErrorCode::Internal, "cannot start a wait thread");
                    send(
                        &writer,
                        &ServerMessage::Reply {
                            id,
                            result: Err(err),
                        },
                    );
                }
            }
            Request::SubscribeEvents => {
                agent.subscribe(writer.clone());
                send(
                    &writer,
                    &ServerMessage::Reply {
                        id,
                        result: Ok(agent_protocol::Response::Done),
                    },
                );
            }
            request => {
                let (result, after) = agent.handle(request);
                let sent = send(&writer, &ServerMessage::Reply { id, result });
                if after == After::Shutdown {
                    agent.power_off();
                }
                if !sent {
                    return;
                }
            }
        }
    }
}
