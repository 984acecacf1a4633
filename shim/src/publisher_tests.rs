use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim_protos::api::Empty;
use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::{create_events, Events};
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::{Server, TtrpcContext};

use super::*;

/// A containerd Events service that records the topics and container ids it is sent.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl Events for Recorder {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope.into_option().unwrap_or_default();
        let exit = TaskExit::parse_from_bytes(&env.event.value).unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", env.topic, exit.container_id));
        Ok(Empty::new())
    }
}

impl Recorder {
    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// "containerd": an Events server on `path` (a stale socket file there is replaced).
async fn serve(path: &Path, rec: &Recorder) -> Server {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    let mut server = Server::new()
        .add_listener(Listener::try_from(listener).unwrap())
        .register_service(create_events(Arc::new(rec.clone())));
    server.start().await.unwrap();
    server
}

fn socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shim-pub-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("ttrpc.sock")
}

fn exit(id: &str) -> TaskExit {
    TaskExit {
        container_id: id.into(),
        ..Default::default()
    }
}

async fn wait_for(rec: &Recorder, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if rec.seen().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rec.seen()
}

#[tokio::test]
async fn events_reach_a_restarted_containerd_in_order() {
    let path = socket("restart");
    let first = Recorder::default();
    let mut server = serve(&path, &first).await;
    let p = Publisher::spawn(path.to_str().unwrap());
    p.publish("/tasks/exit", "ns", &exit("a")).unwrap();
    assert_eq!(wait_for(&first, 1).await, ["/tasks/exit a"]);

    // containerd goes away: its connection dies, its socket stays (a SIGTERMed
    // containerd does not remove it).
    server.shutdown().await.unwrap();
    drop(server);
    for id in ["b", "c", "d"] {
        p.publish("/tasks/exit", "ns", &exit(id)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    let second = Recorder::default();
    let _server = serve(&path, &second).await;
    assert_eq!(
        wait_for(&second, 3).await,
        ["/tasks/exit b", "/tasks/exit c", "/tasks/exit d"]
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn publishing_never_waits_for_containerd() {
    let path = socket("down");
    let p = Publisher::spawn(path.to_str().unwrap());
    let start = std::time::Instant::now();
    for i in 0..QUEUE {
        p.publish("/tasks/exit", "ns", &exit(&i.to_string()))
            .unwrap();
    }
    assert!(matches!(
        p.publish("/tasks/exit", "ns", &exit("x")),
        Err(PublishError::Full { .. })
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn an_event_is_dropped_once_too_old_and_the_next_goes_through() {
    let path = socket("old");
    let p = Publisher::spawn_with(path.to_str().unwrap(), Duration::from_millis(500));
    p.publish("/tasks/exit", "ns", &exit("old")).unwrap();
    // Nobody listens for longer than an event may wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rec = Recorder::default();
    let _server = serve(&path, &rec).await;
    p.publish("/tasks/exit", "ns", &exit("new")).unwrap();
    assert_eq!(wait_for(&rec, 1).await, ["/tasks/exit new"]);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
