//! A vhost-user backend for tests, written from the protocol (raw message parsing, not the
//! `vhost` crate's helpers): it answers on its end of a socketpair, records what the
//! frontend sent (requests, features, memory regions with their fds, ring setup, call and
//! kick fds), and can be told to hang up or misbehave.
//!
//! Wire format: a 12-byte header (request u32, flags u32, payload size u32, little endian),
//! the payload, and file descriptors as SCM_RIGHTS on the same message. Replies set flag
//! 0x4 (plus version 1); flag 0x8 asks for a REPLY_ACK (a u64, 0 = success).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vhost::vhost_user::message::FrontendReq;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

/// How the backend behaves.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Answer to GET_FEATURES.
    pub features: u64,
    /// Answer to GET_PROTOCOL_FEATURES.
    pub protocol_features: u64,
    /// Answer to GET_QUEUE_NUM.
    pub queue_num: u64,
    /// Answer to GET_VRING_BASE.
    pub vring_base: u32,
    /// Hang up on the n-th (1-based) arrival of this request, without answering it.
    pub die_on: Option<(FrontendReq, usize)>,
    /// Answer a REPLY_ACK for this request with failure.
    pub nack: Option<FrontendReq>,
}

/// One memory region of SET_MEM_TABLE, with the fd that came with it.
#[derive(Debug)]
pub struct Region {
    pub gpa: u64,
    pub size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
    pub file: File,
}

/// One SET_VRING_ADDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringAddr {
    pub flags: u32,
    pub desc: u64,
    pub used: u64,
    pub avail: u64,
}

/// What the backend received.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every request, in order.
    pub requests: Vec<FrontendReq>,
    pub features: Option<u64>,
    pub protocol_features: Option<u64>,
    pub regions: Vec<Region>,
    pub nums: BTreeMap<u32, u32>,
    pub addrs: BTreeMap<u32, VringAddr>,
    pub bases: BTreeMap<u32, u32>,
    pub calls: BTreeMap<u32, File>,
    pub kicks: BTreeMap<u32, File>,
    pub enabled: BTreeMap<u32, bool>,
    /// Queue indices GET_VRING_BASE asked about, in order.
    pub base_queries: Vec<u32>,
}

/// The backend thread and what it saw.
pub struct TestBackend {
    seen: Arc<Mutex<Seen>>,
    sock: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl TestBackend {
    /// Starts a backend; returns it and the frontend's end of the socketpair.
    pub fn start(behaviour: Behaviour) -> (Self, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sock = ours.try_clone().unwrap();
        let s = seen.clone();
        let thread = std::thread::spawn(move || serve(ours, &behaviour, &s));
        let backend = Self {
            seen,
            sock,
            thread: Some(thread),
        };
        (backend, theirs)
    }

    /// What was received so far.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Dies: the socket is shut down (the frontend reads end of file) and the thread ends.
    pub fn kill(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Writes a message the frontend did not ask for.
    pub fn send_unasked(&self) {
        (&self.sock).write_all(&header(1, FLAG_VERSION, 0)).unwrap();
    }

    /// Guest RAM as a backend sees it: the regions mapped from the fds it received.
    pub fn guest_memory(&self) -> GuestMemoryMmap<()> {
        let seen = self.seen();
        let ranges = seen.regions.iter().map(|r| {
            let file = r.file.try_clone().unwrap();
            let offset = Some(FileOffset::new(file, r.mmap_offset));
            (GuestAddress(r.gpa), r.size as usize, offset)
        });
        GuestMemoryMmap::from_ranges_with_files(ranges).unwrap()
    }

    /// A frontend virtual address translated through the memory table, as a backend does.
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        let seen = self.seen();
        seen.regions
            .iter()
            .find(|r| (r.user_addr..r.user_addr + r.size).contains(&va))
            .map(|r| va - r.user_addr + r.gpa)
    }

    /// Signals queue `index`'s call eventfd, as a backend does after using buffers.
    pub fn call(&self, index: u32) {
        let seen = self.seen();
        (&seen.calls[&index])
            .write_all(&1u64.to_ne_bytes())
            .unwrap();
    }

    /// Reads queue `index`'s kick eventfd: how many notifications the guest sent.
    pub fn kicks(&self, index: u32) -> u64 {
        let seen = self.seen();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&seen.kicks[&index]);
        let mut buf = [0u8; 8];
        // SAFETY: a non-blocking read of 8 bytes into `buf`; `fd` is open (held by `seen`).
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
        if n == 8 {
            u64::from_ne_bytes(buf)
        } else {
            0
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn header(request: u32, flags: u32, size: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Reads one message: its header fields, payload and fds. None at end of file.
fn recv_msg(sock: &UnixStream) -> Option<(u32, u32, Vec<u8>, Vec<File>)> {
    let mut hdr = [0u8; 12];
    let mut fds: [RawFd; 8] = [-1; 8];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: hdr.len(),
    }];
    // SAFETY: the iovec points at `hdr`, 12 writable bytes that outlive the call.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut fds) }.ok()?;
    let files: Vec<File> = fds[..nfds]
        .iter()
        // SAFETY: recvmsg just installed these fds in this process; nobody else owns them.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return None;
    }
    let mut sock_r = sock;
    if n < hdr.len() {
        sock_r.read_exact(&mut hdr[n..]).ok()?;
    }
    let mut payload = vec![0u8; u32_at(&hdr, 8) as usize];
    sock_r.read_exact(&mut payload).ok()?;
    Some((u32_at(&hdr, 0), u32_at(&hdr, 4), payload, files))
}

fn reply(sock: &UnixStream, request: u32, body: &[u8]) {
    let mut msg = header(request, FLAG_VERSION | FLAG_REPLY, body.len() as u32).to_vec();
    msg.extend_from_slice(body);
    let _ = (&*sock).write_all(&msg);
}

fn serve(sock: UnixStream, b: &Behaviour, seen: &Mutex<Seen>) {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    while let Some((code, flags, payload, files)) = recv_msg(&sock) {
        let Ok(req) = FrontendReq::try_from(code) else {
            return;
        };
        let n = counts.entry(code).or_default();
        *n += 1;
        if b.die_on == Some((req, *n)) {
            let _ = sock.shutdown(Shutdown::Both);
            return;
        }
        let mut s = seen.lock().unwrap();
        s.requests.push(req);
        if let Some(body) = answer(&mut s, b, req, &payload, files) {
            reply(&sock, code, &body);
            continue;
        }
        let reply_ack = s.protocol_features.unwrap_or(0) & PROTOCOL_F_REPLY_ACK != 0;
        if reply_ack && flags & FLAG_NEED_REPLY != 0 {
            let status = u64::from(b.nack == Some(req));
            reply(&sock, code, &status.to_le_bytes());
        }
    }
}

/// Records `req`; returns its reply body if the request has one of its own.
fn answer(
    s: &mut Seen,
    b: &Behaviour,
    req: FrontendReq,
    p: &[u8],
    mut files: Vec<File>,
) -> Option<Vec<u8>> {
    let state = || (u32_at(p, 0), u32_at(p, 4));
    match req {
        FrontendReq::GET_FEATURES => return Some(b.features.to_le_bytes().to_vec()),
        FrontendReq::GET_PROTOCOL_FEATURES => {
            return Some(b.protocol_features.to_le_bytes().to_vec())
        }
        FrontendReq::GET_QUEUE_NUM => return Some(b.queue_num.to_le_bytes().to_vec()),
        FrontendReq::GET_VRING_BASE => {
            s.base_queries.push(state().0);
            let mut body = state().0.to_le_bytes().to_vec();
            body.extend_from_slice(&b.vring_base.to_le_bytes());
            return Some(body);
        }
        FrontendReq::SET_FEATURES => s.features = Some(u64_at(p, 0)),
        FrontendReq::SET_PROTOCOL_FEATURES => s.protocol_features = Some(u64_at(p, 0)),
        FrontendReq::SET_MEM_TABLE => {
            // struct { u32 nregions; u32 padding; regions[]: { gpa, size, uaddr, offset } }
            let count = u32_at(p, 0) as usize;
            assert_eq!(files.len(), count, "one fd per region");
            s.regions = files
                .drain(..)
                .enumerate()
                .map(|(i, file)| {
                    let at = 8 + 32 * i;
                    Region {
                        gpa: u64_at(p, at),
                        size: u64_at(p, at + 8),
                        user_addr: u64_at(p, at + 16),
                        mmap_offset: u64_at(p, at + 24),
                        file,
                    }
                })
                .collect();
        }
        FrontendReq::SET_VRING_NUM => {
            s.nums.insert(state().0, state().1);
        }
        FrontendReq::SET_VRING_BASE => {
            s.bases.insert(state().0, state().1);
        }
        FrontendReq::SET_VRING_ENABLE => {
            s.enabled.insert(state().0, state().1 == 1);
        }
        FrontendReq::SET_VRING_ADDR => {
            // struct { u32 index; u32 flags; u64 desc, used, avail, log }
            let addr = VringAddr {
                flags: u32_at(p, 4),
                desc: u64_at(p, 8),
                used: u64_at(p, 16),
                avail: u64_at(p, 24),
            };
            s.addrs.insert(u32_at(p, 0), addr);
        }
        FrontendReq::SET_VRING_CALL | FrontendReq::SET_VRING_KICK => {
            // u64: bits 0-7 the index, bit 8 "no fd".
            let index = (u64_at(p, 0) & 0xff) as u32;
            let map = if req == FrontendReq::SET_VRING_CALL {
                &mut s.calls
            } else {
                &mut s.kicks
            };
            if let Some(f) = files.pop() {
                map.insert(index, f);
            }
        }
        _ => {}
    }
    None
}
