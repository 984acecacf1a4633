//! FUSE requests answered with EIO: single chains, then whole queues laid out in guest
//! memory as a backend left them.

use vm_memory::{Address, Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{test_mem, TestQueue, MEM_SIZE, WRITE};

const FUSE_LOOKUP: u32 = 1;

/// Writes a fuse_in_header for `unique` at `at`, and returns its bytes.
fn in_header(mem: &VmMemory, at: u64, unique: u64) -> [u8; IN_HEADER_LEN] {
    let mut h = [0u8; IN_HEADER_LEN];
    h[0..4].copy_from_slice(&(IN_HEADER_LEN as u32 + 5).to_le_bytes());
    h[4..8].copy_from_slice(&FUSE_LOOKUP.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h[16..24].copy_from_slice(&1u64.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
    h
}

fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
    Descriptor::new(addr, len, flags, 0)
}

/// The fuse_out_header at `at`: (len, error, unique).
fn out_header(mem: &VmMemory, at: u64) -> (u32, i32, u64) {
    let a = GuestAddress(at);
    (
        mem.read_obj(a).unwrap(),
        mem.read_obj(a.unchecked_add(4)).unwrap(),
        mem.read_obj(a.unchecked_add(8)).unwrap(),
    )
}

#[test]
fn a_request_gets_eio_for_its_unique_in_the_first_writable_buffer() {
    let mem = test_mem();
    in_header(&mem, 0x1000, 0x1122_3344_5566_7788);
    mem.write_slice(b"name\0", GuestAddress(0x2000)).unwrap();
    mem.write_slice(&[0xaa; 144], GuestAddress(0x3000)).unwrap();
    let chain = [
        d(0x1000, 40, 0),
        d(0x2000, 5, 0),
        d(0x3000, 16, WRITE),
        d(0x3010, 128, WRITE),
    ];
    assert_eq!(reply_eio(&mem, &chain), Ok(16));
    assert_eq!(
        out_header(&mem, 0x3000),
        (16, -libc::EIO, 0x1122_3344_5566_7788)
    );
    // Nothing past the header is touched.
    let mut rest = [0u8; 128];
    mem.read_slice(&mut rest, GuestAddress(0x3010)).unwrap();
    assert_eq!(rest, [0xaa; 128]);
}

#[test]
fn a_header_split_over_descriptors_is_put_together() {
    let mem = test_mem();
    let h = in_header(&mem, 0x1000, 42);
    mem.write_slice(&h[..10], GuestAddress(0x5000)).unwrap();
    mem.write_slice(&h[10..], GuestAddress(0x6000)).unwrap();
    let chain = [d(0x5000, 10, 0), d(0x6000, 30, 0), d(0x7000, 64, WRITE)];
    assert_eq!(reply_eio(&mem, &chain), Ok(16));
    assert_eq!(out_header(&mem, 0x7000), (16, -libc::EIO, 42));
}

#[test]
fn a_request_without_reply_buffers_is_returned_empty() {
    let mem = test_mem();
    in_header(&mem, 0x1000, 7);
    // FUSE_FORGET: header and arguments, nothing to write.
    assert_eq!(reply_eio(&mem, &[d(0x1000, 48, 0)]), Ok(0));
}

#[test]
fn malformed_chains_get_no_reply() {
    let mem = test_mem();
    in_header(&mem, 0x1000, 9);
    let end = MEM_SIZE;
    let cases: [(&[Descriptor], ChainError); 6] = [
        (&[], ChainError::ShortHeader(0)),
        (
            &[d(0x1000, 20, 0), d(0x3000, 16, WRITE)],
            ChainError::ShortHeader(20),
        ),
        (
            &[d(0x1000, 40, 0), d(0x3000, 16, WRITE), d(0x4000, 8, 0)],
            ChainError::ReadAfterWrite,
        ),
        (
            &[d(0x1000, 40, 0), d(0x3000, 8, WRITE), d(0x4000, 64, WRITE)],
            ChainError::ShortReply(8),
        ),
        (
            &[d(end - 8, 40, 0), d(0x3000, 16, WRITE)],
            ChainError::Memory(end - 8),
        ),
        (
            &[d(0x1000, 40, 0), d(end - 4, 16, WRITE)],
            ChainError::Memory(end - 4),
        ),
    ];
    for (chain, want) in cases {
        mem.write_slice(&[0u8; 16], GuestAddress(0x3000)).unwrap();
        assert_eq!(reply_eio(&mem, chain), Err(want), "{chain:?}");
        assert_eq!(out_header(&mem, 0x3000), (0, 0, 0), "{chain:?}");
    }
    let long = vec![d(0x1000, 1, 0); MAX_CHAIN_LEN + 1];
    assert_eq!(reply_eio(&mem, &long), Err(ChainError::TooLong));
}

/// A request queue as a backend left it: `total` requests offered (unique = 100 + i,
/// reply buffer at 0x40_0000 + 0x1000 * i), the first `done` completed in the used ring.
fn queue_left_by_backend(mem: &VmMemory, total: u16, done: u16) -> (TestQueue, Queue) {
    let mut tq = TestQueue::new(mem, 0x10_0000, 16);
    let mut q = tq.queue();
    q.set_event_idx(true);
    for i in 0..u64::from(total) {
        let req = 0x30_0000 + 0x1000 * i;
        in_header(mem, req, 100 + i);
        tq.add_chain(&[(req, 40, 0), (0x40_0000 + 0x1000 * i, 4096, WRITE)]);
    }
    let (_, _, used) = tq.addrs();
    for i in 0..u64::from(done) {
        let entry = GuestAddress(used + 4 + 8 * i);
        mem.write_obj(2 * i as u32, entry).unwrap();
        mem.write_obj(80u32, entry.unchecked_add(4)).unwrap();
    }
    mem.write_obj(done, GuestAddress(used + 2)).unwrap();
    (tq, q)
}

#[test]
fn taking_over_answers_what_the_backend_left_and_what_comes_next() {
    let mem = test_mem();
    let (mut tq, q) = queue_left_by_backend(&mem, 4, 2);
    let hiprio = TestQueue::new(&mem, 0x20_0000, 16).queue();
    let mut a = Answering::take_over(&mem, &[hiprio, q], "test".into());
    assert!(a.answer_all(&mem));
    let used = tq.used();
    assert_eq!(used.len(), 4);
    // The backend's two completions stay; the two requests it left get EIO, in order.
    assert_eq!(used[2..], [(4, 16), (6, 16)]);
    for i in 0..4u64 {
        let want = if i < 2 {
            (0, 0, 0)
        } else {
            (16, -libc::EIO, 100 + i)
        };
        assert_eq!(
            out_header(&mem, 0x40_0000 + 0x1000 * i),
            want,
            "request {i}"
        );
    }
    // EVENT_IDX: the driver is asked to notify at the next request.
    let (_, _, used_addr) = tq.addrs();
    let avail_event: u16 = mem.read_obj(GuestAddress(used_addr + 4 + 8 * 16)).unwrap();
    assert_eq!(avail_event, 4);

    // A new request after the take-over.
    in_header(&mem, 0x38_0000, 555);
    tq.add_chain(&[(0x38_0000, 40, 0), (0x48_0000, 16, WRITE)]);
    assert!(!a.answer(&mem, 0), "the hiprio queue has nothing");
    assert!(a.answer(&mem, 1));
    assert_eq!(tq.used().len(), 5);
    assert_eq!(out_header(&mem, 0x48_0000), (16, -libc::EIO, 555));
    assert!(!a.answer(&mem, 1), "nothing new");
    assert!(!a.answer(&mem, 7), "no such queue");
}

#[test]
fn notifications_the_backend_turned_off_are_turned_back_on() {
    let mem = test_mem();
    let (tq, mut q) = queue_left_by_backend(&mem, 1, 1);
    q.set_event_idx(false);
    let (_, _, used_addr) = tq.addrs();
    // VRING_USED_F_NO_NOTIFY, as a backend sets it while it works.
    mem.write_obj(1u16, GuestAddress(used_addr)).unwrap();
    let mut a = Answering::take_over(&mem, &[q], "test".into());
    assert!(!a.answer_all(&mem), "nothing was pending");
    let flags: u16 = mem.read_obj(GuestAddress(used_addr)).unwrap();
    assert_eq!(flags, 0);
}

#[test]
fn a_malformed_chain_is_returned_unused_and_the_rest_answered() {
    let mem = test_mem();
    let mut tq = TestQueue::new(&mem, 0x10_0000, 16);
    let q = tq.queue();
    in_header(&mem, 0x30_0000, 1);
    tq.add_chain(&[(0x30_0000, 40, 0), (0x40_0000, 4, WRITE)]);
    tq.add_chain(&[(0x30_0000, 40, 0), (0x41_0000, 16, WRITE)]);
    let mut a = Answering::take_over(&mem, &[q], "test".into());
    assert!(a.answer_all(&mem));
    assert_eq!(tq.used(), [(0, 0), (2, 16)]);
    assert_eq!(out_header(&mem, 0x41_0000), (16, -libc::EIO, 1));
}

#[test]
fn a_corrupt_ring_is_left_alone() {
    let mem = test_mem();
    let (tq, q) = queue_left_by_backend(&mem, 2, 0);
    let (_, avail, used) = tq.addrs();
    // The used index is far behind the available one: nothing can be trusted.
    mem.write_obj(40000u16, GuestAddress(used + 2)).unwrap();
    assert!(matches!(
        resume_at_used_index(&mem, &q),
        Err(TakeOverError::Indices {
            avail: 2,
            used: 40000
        })
    ));
    let mut a = Answering::take_over(&mem, &[q], "test".into());
    assert!(!a.answer_all(&mem));
    assert_eq!(out_header(&mem, 0x40_0000), (0, 0, 0));

    // The driver's index jumps after the take-over: the queue is dropped, no panic.
    let (mut tq, q) = queue_left_by_backend(&mem, 1, 0);
    let mut a = Answering::take_over(&mem, &[q], "test".into());
    mem.write_obj(30000u16, GuestAddress(avail + 2)).unwrap();
    assert!(!a.answer(&mem, 0));
    tq.publish(0);
    assert!(!a.answer(&mem, 0), "the queue is no longer answered");
    assert!(tq.used().is_empty());
}
