//! The device event loop: one thread that owns the `EventManager` and runs every device's
//! queue and backend processing.
//!
//! Other threads never touch the event manager (sharing it behind a Mutex is a known deadlock
//! source): they send new subscribers through a channel and kick an eventfd; stopping is
//! another eventfd. Devices reach the loop thread on their own through eventfds (queue
//! notifications from KVM ioeventfds, the activation eventfd of
//! [`crate::devices::virtio::activation`]).
//!
//! ```ignore
//! let event_loop = EventLoop::start()?;        // in the VMM builder, before devices
//! event_loop.add_subscriber(device.clone())?;  // per device (attach_virtio_mmio does it)
//! ...
//! event_loop.stop()?;                          // at VM shutdown (also on drop)
//! ```

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A subscriber as the event loop holds it: shared with the MMIO bus (devices) or owned.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors starting, feeding or stopping the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot create the event loop's eventfds: {0}")]
    EventFd(io::Error),
    #[error("cannot create the device event manager: {0}")]
    EventManager(event_manager::Error),
    #[error("cannot start the device event-loop thread: {0}")]
    Spawn(io::Error),
    #[error("the device event-loop thread is gone")]
    Gone,
    #[error("the device event loop failed: {0}")]
    Run(event_manager::Error),
    #[error("the device event-loop thread panicked")]
    Panicked,
}

const WAKE: u32 = 0;
const EXIT: u32 = 1;

/// Handle to the running event-loop thread.
pub struct EventLoop {
    tx: Sender<Subscriber>,
    wake: EventFd,
    exit: EventFd,
    thread: Option<JoinHandle<Result<(), EventLoopError>>>,
}

/// The loop's own subscriber: the wake and exit eventfds.
struct Control {
    wake: EventFd,
    exit: EventFd,
    exiting: bool,
}

impl MutEventSubscriber for Control {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            WAKE => {
                let _ = self.wake.read();
            }
            EXIT => {
                let _ = self.exit.read();
                self.exiting = true;
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token) in [(&self.wake, WAKE), (&self.exit, EXIT)] {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("event loop cannot poll its control eventfd: {e}");
            }
        }
    }
}

impl EventLoop {
    /// Starts the event-loop thread.
    pub fn start() -> Result<Self, EventLoopError> {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let exit = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let control = Arc::new(Mutex::new(Control {
            wake: wake.try_clone().map_err(EventLoopError::EventFd)?,
            exit: exit.try_clone().map_err(EventLoopError::EventFd)?,
            exiting: false,
        }));
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(EventLoopError::EventManager)?;
        manager.add_subscriber(control.clone());
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || run(manager, control, rx))
            .map_err(EventLoopError::Spawn)?;
        Ok(Self {
            tx,
            wake,
            exit,
            thread: Some(thread),
        })
    }

    /// Hands `subscriber` to the loop thread, which calls its `init` there.
    pub fn add_subscriber(&self, subscriber: Subscriber) -> Result<(), EventLoopError> {
        self.tx.send(subscriber).map_err(|_| EventLoopError::Gone)?;
        self.wake.write(1).map_err(EventLoopError::EventFd)
    }

    /// Stops the loop thread and waits for it; returns how it ended.
    pub fn stop(mut self) -> Result<(), EventLoopError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), EventLoopError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.exit.write(1).map_err(EventLoopError::EventFd)?;
        thread.join().map_err(|_| EventLoopError::Panicked)?
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("{e}");
        }
    }
}

fn run(
    mut manager: EventManager<Subscriber>,
    control: Arc<Mutex<Control>>,
    rx: Receiver<Subscriber>,
) -> Result<(), EventLoopError> {
    crate::seccomp::confine_current(crate::seccomp::ThreadKind::Devices);
    loop {
        match manager.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(EventLoopError::Run(e)),
        }
        while let Ok(subscriber) = rx.try_recv() {
            manager.add_subscriber(subscriber);
        }
        if control.lock().unwrap_or_else(|e| e.into_inner()).exiting {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    struct Echo {
        evt: EventFd,
        seen: std::sync::mpsc::SyncSender<u64>,
    }

    impl MutEventSubscriber for Echo {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.seen.send(self.evt.read().unwrap());
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn subscribers_run_on_the_loop_and_stop_is_clean() {
        let el = EventLoop::start().unwrap();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = sync_channel(4);
        el.add_subscriber(Arc::new(Mutex::new(Echo {
            evt: evt.try_clone().unwrap(),
            seen: tx,
        })))
        .unwrap();
        evt.write(3).unwrap();
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got, 3);
        el.stop().unwrap();
    }

    #[test]
    fn drop_stops_the_thread() {
        let el = EventLoop::start().unwrap();
        drop(el);
    }
}
