//! The whole virtio path without KVM: a driver programming the MMIO registers of a
//! transport, a block device on the real event-loop thread, notifications through the
//! queue eventfd, completion through the interrupt eventfd; then reset and a second
//! activation.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::blk::Block;
use super::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use super::status::*;
use super::test_utils::{test_mem, TestQueue, WRITE};
use super::VIRTIO_F_VERSION_1;
use crate::bus::BusDevice;
use crate::devices::interrupt::IrqFd;
use crate::event_loop::EventLoop;

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Linux's virtio_mmio probe + virtio_dev_probe + setup_vq, condensed.
fn driver_setup(t: &mut MmioTransport, q: &TestQueue) {
    w(t, 0x70, 0);
    w(t, 0x70, ACKNOWLEDGE);
    w(t, 0x70, ACKNOWLEDGE | DRIVER);
    w(t, 0x14, 1);
    assert_ne!(r(t, 0x10) & 1, 0, "VERSION_1 offered");
    w(t, 0x24, 0);
    w(t, 0x20, 0);
    w(t, 0x24, 1);
    w(t, 0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
    w(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(r(t, 0x70), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let (d, a, u) = q.addrs();
    w(t, 0x30, 0);
    assert_eq!(r(t, 0x44), 0);
    assert!(r(t, 0x34) >= 16);
    w(t, 0x38, 16);
    for (reg, addr) in [(0x80, d), (0x90, a), (0xa0, u)] {
        w(t, reg, addr as u32);
        w(t, reg + 4, (addr >> 32) as u32);
    }
    w(t, 0x44, 1);
    w(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(r(t, 0x70), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

fn wait_irq(irq: &IrqFd) {
    let start = Instant::now();
    while irq.eventfd().read().is_err() {
        assert!(start.elapsed() < Duration::from_secs(5), "no interrupt");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn block_read_through_transport_and_event_loop() {
    let mem = test_mem();
    let tmp = TempFile::new().unwrap();
    let disk: Vec<u8> = (0..4096u32).map(|i| (i / 512) as u8 + 1).collect();
    tmp.as_file().write_all(&disk).unwrap();
    let blk = Arc::new(Mutex::new(Block::new(tmp.as_path(), true, "e2e").unwrap()));
    let irq = Arc::new(IrqFd::new(5).unwrap());
    let mut t = MmioTransport::new(mem.clone(), blk.clone(), irq.clone()).unwrap();
    let el = EventLoop::start().unwrap();
    el.add_subscriber(blk).unwrap();

    for (round, sector) in [(0u64, 3u64), (1, 5)] {
        // A fresh queue each round: the second one runs after a reset.
        let mut q = TestQueue::new(&mem, 0x10_0000 * (round + 1), 16);
        driver_setup(&mut t, &q);
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(sector, GuestAddress(0x1008)).unwrap();
        q.add_chain(&[(0x1000, 16, 0), (0x2000, 512, WRITE), (0x3000, 1, WRITE)]);
        w(&mut t, NOTIFY_REG_OFFSET, 0);
        wait_irq(&irq);
        assert_eq!(q.used(), vec![(0, 513)]);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(),
            sector as u8 + 1
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0);
        assert_eq!(r(&mut t, 0x60), 1);
        w(&mut t, 0x64, 1);
        assert_eq!(r(&mut t, 0x60), 0);
        w(&mut t, 0x70, 0);
    }
    el.stop().unwrap();
}
