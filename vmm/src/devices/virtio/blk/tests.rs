//! virtio-blk through its queue in guest memory.

use std::io::Write;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::test_utils::{
    activate_ctx, test_interrupt, test_mem, TestQueue, WRITE,
};

fn block(read_only: bool) -> (Block, TempFile) {
    let tmp = TempFile::new().unwrap();
    tmp.as_file().write_all(&[7u8; 4096]).unwrap();
    (Block::new(tmp.as_path(), read_only, "id").unwrap(), tmp)
}

#[test]
fn features_and_config() {
    let (b, _t) = block(true);
    assert_ne!(b.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);
    assert_ne!(b.avail_features() & VIRTIO_F_VERSION_1, 0);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let (b, _t) = block(false);
    assert_eq!(b.avail_features() & 1 << VIRTIO_BLK_F_RO, 0);
}

#[test]
fn queue_round_trip_and_loops() {
    let mem = test_mem();
    let (mut b, _t) = block(false);
    let mut q = TestQueue::new(&mem, 0x10_0000, 16);
    let (interrupt, irq) = test_interrupt();
    b.activate(activate_ctx(
        &mem,
        &[&q],
        interrupt.clone(),
        VIRTIO_F_VERSION_1,
    ))
    .unwrap();

    // A good read of sector 1.
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(0x1000))
        .unwrap();
    mem.write_obj(1u64, GuestAddress(0x1008)).unwrap();
    let h1 = q.add_chain(&[(0x1000, 16, 0), (0x2000, 512, WRITE), (0x3000, 1, WRITE)]);
    // A descriptor loop: 10 -> 11 -> 10 ... The chain walker stops after the queue size.
    q.write_desc(10, 0x1000, 16, 1, 11);
    q.write_desc(11, 0x2000, 512, 1 | WRITE, 10);
    q.publish(10);
    b.process_queue();

    let used = q.used();
    assert_eq!(used.len(), 2);
    assert_eq!(used[0], (u32::from(h1), 513));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0);
    // The looping chain is cut at the queue size; it then mixes directions and ends in the
    // writable descriptor 11, which gets the IOERR status. No hang, no panic.
    assert_eq!(used[1], (10, 1));
    let mut buf = [0u8; 512];
    mem.read_slice(&mut buf, GuestAddress(0x2000)).unwrap();
    assert_eq!(buf[0], VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(buf[1..], [7; 511]);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    assert_eq!(interrupt.status() & 1, 1);

    // Head index outside the table: cannot be returned, the device needs a reset.
    q.publish(200);
    b.process_queue();
    assert_eq!(q.used().len(), 2);
    assert!(interrupt.needs_reset());
    b.reset();
    interrupt.reset();

    // An available index far ahead of ours: needs reset, nothing popped.
    let q2 = TestQueue::new(&mem, 0x20_0000, 16);
    b.activate(activate_ctx(
        &mem,
        &[&q2],
        interrupt.clone(),
        VIRTIO_F_VERSION_1,
    ))
    .unwrap();
    mem.write_obj(40u16, GuestAddress(q2.addrs().1 + 2))
        .unwrap();
    b.process_queue();
    assert!(interrupt.needs_reset());
    assert!(q2.used().is_empty());

    b.reset();
    b.process_queue();
}
