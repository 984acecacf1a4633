//! Threads that stay: each connection, process monitor, wait and spawn runs on a pooled
//! worker instead of a thread of its own.
//!
//! Starting a thread costs about 0.2 s in a guest whose kernel code is emulated (clone,
//! the stack and signal-stack mappings, their first page faults), and a `run` used six.
//! A worker that finished a job waits for the next one with its stack still mapped. A
//! template's agent is asked to warm the pool before the snapshot ([`warm`]), so every
//! clone starts with idle workers whose stacks are already in memory.
//!
//! [`run`] never waits for a worker: with none idle it starts a new one (which joins the
//! pool afterwards, up to [`MAX_WORKERS`]; past that, a plain thread). So a job may block
//! on another job without deadlock.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// A unit of work.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Stack size of every worker: the largest any job asked of a thread of its own.
const STACK: usize = 256 << 10;
/// Workers kept at most; jobs beyond them get threads that exit when done.
pub const MAX_WORKERS: usize = 64;
/// Stack a warmed worker touches once, so that its pages are mapped before a snapshot.
const WARM_STACK: usize = 32 << 10;

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    workers: usize,
}

#[derive(Default)]
struct Pool {
    state: Mutex<State>,
    more: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `job` on an idle worker, or on a new thread.
pub fn run(job: impl FnOnce() + Send + 'static) -> io::Result<()> {
    run_boxed(Box::new(job))
}

fn run_boxed(job: Job) -> io::Result<()> {
    let p = pool();
    let mut st = p.lock();
    if st.idle > st.jobs.len() {
        st.jobs.push_back(job);
        p.more.notify_one();
        return Ok(());
    }
    let keep = st.workers < MAX_WORKERS;
    if keep {
        st.workers += 1;
    }
    drop(st);
    let b = std::thread::Builder::new().stack_size(STACK);
    let started = if keep {
        b.name("agent-worker".into())
            .spawn(move || worker(Some(job)))
    } else {
        b.spawn(job)
    };
    if let Err(e) = started {
        if keep {
            p.lock().workers -= 1;
        }
        return Err(e);
    }
    Ok(())
}

thread_local! {
    static RETIRE: Cell<bool> = const { Cell::new(false) };
}

/// Called from a job: this thread leaves the pool once the job is done (the job changed
/// per-thread state it could not restore).
pub fn retire_this_thread() {
    RETIRE.with(|r| r.set(true));
}

fn worker(mut job: Option<Job>) {
    let p = pool();
    loop {
        if let Some(j) = job.take() {
            // A panicking job must not take the worker (and the pool's count) with it.
            let _ = catch_unwind(AssertUnwindSafe(j));
        }
        if RETIRE.with(|r| r.get()) {
            p.lock().workers -= 1;
            return;
        }
        let mut st = p.lock();
        st.idle += 1;
        while st.jobs.is_empty() {
            st = p.more.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        job = st.jobs.pop_front();
        st.idle -= 1;
    }
}

/// Makes sure `n` workers (at most [`MAX_WORKERS`]) exist and are idle, each having
/// touched [`WARM_STACK`] of its stack; returns once they are.
pub fn warm(n: usize) -> io::Result<()> {
    let n = n.min(MAX_WORKERS);
    let (done, wait) = std::sync::mpsc::channel();
    // Occupy n workers at once (so that n distinct ones exist), then release them together.
    let gate = std::sync::Arc::new((Mutex::new(false), Condvar::new()));
    for _ in 0..n {
        let (done, gate) = (done.clone(), gate.clone());
        run(move || {
            touch_stack();
            let _ = done.send(());
            let (open, cv) = &*gate;
            let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
            while !*o {
                o = cv.wait(o).unwrap_or_else(|e| e.into_inner());
            }
        })?;
    }
    drop(done);
    for _ in 0..n {
        if wait.recv().is_err() {
            break;
        }
    }
    let (open, cv) = &*gate;
    *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
    cv.notify_all();
    // Until each is back waiting for work (a job that came in meanwhile may hold one: the
    // wait is bounded, and warming is only a speed-up).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while idle() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

#[inline(never)]
fn touch_stack() {
    let mut buf = [0u8; WARM_STACK];
    std::hint::black_box(&mut buf);
}

/// Workers waiting for a job.
pub fn idle() -> usize {
    pool().lock().idle
}

/// Workers kept.
#[cfg(test)]
fn workers() -> usize {
    pool().lock().workers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    // The pool is process-wide, so one test covers it in order.
    #[test]
    fn jobs_reuse_idle_workers_grow_when_all_are_busy_and_may_wait_on_each_other() {
        warm(3).unwrap();
        assert!(idle() >= 3);
        let before = workers();

        // Sequential jobs: no new worker.
        for _ in 0..10 {
            let (tx, rx) = mpsc::channel();
            run(move || tx.send(std::thread::current().id()).unwrap()).unwrap();
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert_eq!(workers(), before);

        // A job that waits for a later job: the later one gets a worker (or a new one).
        let (tx, rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let blockers = before + 2;
        let gate = std::sync::Arc::new(Mutex::new(rx));
        for _ in 0..blockers {
            let (gate, done_tx) = (gate.clone(), done_tx.clone());
            run(move || {
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(10));
                done_tx.send(()).unwrap();
            })
            .unwrap();
        }
        // All `before` idle workers are now busy: these ran on new threads.
        for _ in 0..blockers {
            tx.send(()).unwrap();
        }
        for _ in 0..blockers {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert!(workers() >= blockers, "{} < {blockers}", workers());

        // A panicking job leaves its worker in the pool.
        let w = workers();
        run(|| panic!("job panics")).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::sleep(Duration::from_millis(50));
        run(move || tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(workers(), w);
    }
}
