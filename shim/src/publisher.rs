//! Task events to containerd, in order, across containerd restarts.
//!
//! The shim library's `RemotePublisher` reconnects only when ttrpc reports
//! `RemoteClosed`/`LocalClosed`; ttrpc 0.10 reports a connection whose peer went away as
//! a generic `Others("reserve channel capacity failed: channel closed")`, so after a
//! containerd restart every event was lost. It also requeued a failed event behind later
//! ones (an exit could overtake its start).
//!
//! Here `publish` only queues (it never waits: Task calls must not hang on containerd),
//! and one task sends the queue in order. Any failure to reach containerd drops the
//! connection; the same event is retried on a new one, with backoff, until it is
//! `MAX_AGE` old, and is then dropped with a warning (the queue behind it keeps moving).
//! An answer from containerd that rejects the event is final: it is dropped at once.

use std::time::Duration;

use containerd_shim_protos::events::task::TaskOOM;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::r#async::transport::Socket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Events waiting for containerd; beyond this many the newest are dropped.
const QUEUE: usize = 1024;
/// How long an event may wait for containerd (a restart takes seconds).
const MAX_AGE: Duration = Duration::from_secs(60);
/// The first and the longest wait between attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one Forward may take before the connection counts as dead.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an event was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode the {topic} event: {err}")]
    Encode {
        topic: String,
        err: containerd_shim_protos::protobuf::Error,
    },
    #[error("the event queue to containerd is full ({QUEUE}); {topic} dropped")]
    Full { topic: String },
    #[error("the event publisher has stopped; {topic} dropped")]
    Stopped { topic: String },
}

/// One queued event.
struct Item {
    envelope: Envelope,
    queued: Instant,
}

/// Queues events for the sender task; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    queue: mpsc::Sender<Item>,
}

impl Publisher {
    /// Starts the sender task for containerd's ttrpc socket `address` (a path, or a
    /// `unix://` URL). It connects when it first has something to send.
    pub fn spawn(address: &str) -> Publisher {
        Self::spawn_with(address, MAX_AGE)
    }

    fn spawn_with(address: &str, max_age: Duration) -> Publisher {
        let (queue, items) = mpsc::channel(QUEUE);
        tokio::spawn(send_all(Sender::new(address, max_age), items));
        Publisher { queue }
    }

    /// Queues `event` under `topic` in `namespace`; never waits.
    pub fn publish(
        &self,
        topic: &str,
        namespace: &str,
        event: &dyn MessageDyn,
    ) -> Result<(), PublishError> {
        let envelope = envelope(topic, namespace, event)?;
        let item = Item {
            envelope,
            queued: Instant::now(),
        };
        self.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError::Full {
                topic: topic.into(),
            },
            mpsc::error::TrySendError::Closed(_) => PublishError::Stopped {
                topic: topic.into(),
            },
        })
    }
}

/// The event as containerd's Events service takes it.
fn envelope(
    topic: &str,
    namespace: &str,
    event: &dyn MessageDyn,
) -> Result<Envelope, PublishError> {
    let value = event
        .write_to_bytes_dyn()
        .map_err(|err| PublishError::Encode {
            topic: topic.into(),
            err,
        })?;
    let mut any = Any::new();
    any.type_url = event.descriptor_dyn().full_name().to_string();
    any.value = value;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = now.as_secs() as i64;
    ts.nanos = now.subsec_nanos() as i32;
    let mut env = Envelope::new();
    env.topic = topic.into();
    env.namespace = namespace.into();
    env.timestamp = Some(ts).into();
    env.event = Some(any).into();
    Ok(env)
}

/// The OOM event CRI turns into a container's `OOMKilled` reason.
pub fn oom_event(container_id: &str) -> TaskOOM {
    TaskOOM {
        container_id: container_id.into(),
        ..Default::default()
    }
}

/// What happened to one attempt.
enum Attempt {
    Delivered,
    /// containerd answered with an error: retrying would get the same answer.
    Rejected(ttrpc::Error),
    /// containerd was not reached (down, restarting, or the connection died).
    Unreachable(String),
}

/// The connection to containerd, made again after any failure.
struct Sender {
    address: String,
    client: Option<EventsClient>,
    /// How long an event may wait (`MAX_AGE`).
    max_age: Duration,
}

impl Sender {
    fn new(address: &str, max_age: Duration) -> Sender {
        Sender {
            address: address
                .strip_prefix("unix://")
                .unwrap_or(address)
                .to_string(),
            client: None,
            max_age,
        }
    }

    async fn client(&mut self) -> Result<&EventsClient, String> {
        if self.client.is_none() {
            let stream = tokio::net::UnixStream::connect(&self.address)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.address))?;
            let client = Client::new(Socket::from(stream));
            self.client = Some(EventsClient::new(client));
        }
        Ok(self.client.as_ref().expect("just set"))
    }

    async fn attempt(&mut self, req: &ForwardRequest) -> Attempt {
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return Attempt::Unreachable(e),
        };
        let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
        match client.forward(ctx, req).await {
            Ok(_) => Attempt::Delivered,
            Err(e @ ttrpc::Error::RpcStatus(_)) => Attempt::Rejected(e),
            Err(e) => {
                self.client = None;
                Attempt::Unreachable(e.to_string())
            }
        }
    }

    /// Sends one event, retrying until it is delivered, rejected or too old.
    async fn deliver(&mut self, item: Item) {
        let topic = item.envelope.topic.clone();
        let deadline = item.queued + self.max_age;
        let mut req = ForwardRequest::new();
        req.envelope = Some(item.envelope).into();
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            match self.attempt(&req).await {
                Attempt::Delivered => {
                    if failures > 0 {
                        log::info!("containerd reached again after {failures} failed attempts; {topic} delivered");
                    }
                    return;
                }
                Attempt::Rejected(e) => {
                    log::warn!("containerd rejected the {topic} event: {e}");
                    return;
                }
                Attempt::Unreachable(why) => {
                    failures += 1;
                    if failures == 1 {
                        log::warn!("cannot publish {topic}, will reconnect and retry: {why}");
                    }
                    if Instant::now() + backoff > deadline {
                        log::warn!(
                            "dropping the {topic} event after {failures} attempts over {:?}: {why}",
                            self.max_age
                        );
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The sender task: every queued event in order, until every `Publisher` is gone.
async fn send_all(mut sender: Sender, mut items: mpsc::Receiver<Item>) {
    while let Some(item) = items.recv().await {
        sender.deliver(item).await;
    }
}

#[cfg(test)]
#[path = "publisher_tests.rs"]
mod tests;
