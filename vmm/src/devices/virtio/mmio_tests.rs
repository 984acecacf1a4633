use std::sync::{Arc, Mutex};

use super::*;
use crate::devices::interrupt::IrqFd;
use crate::devices::virtio::test_utils::{test_mem, TestQueue};
use crate::devices::virtio::{read_config_bytes, ActivateError};

#[derive(Default)]
struct Dummy {
    activations: Vec<(u64, Vec<u16>)>,
    resets: usize,
    config: [u8; 8],
    refuse: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << 3
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = self
            .config
            .get_mut(offset as usize..offset as usize + data.len())
        {
            dst.copy_from_slice(data);
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.refuse {
            return Err(ActivateError::Backend("no".into()));
        }
        let sizes = ctx.queues.iter().map(|q| q.size()).collect();
        self.activations.push((ctx.acked_features, sizes));
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
}

fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>, Arc<IrqFd>) {
    let dev = Arc::new(Mutex::new(Dummy::default()));
    let irq = Arc::new(IrqFd::new(5).unwrap());
    let t = MmioTransport::new(test_mem(), dev.clone(), irq.clone()).unwrap();
    (t, dev, irq)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Drives the device to FEATURES_OK with the given features.
fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, REG_STATUS, status::ACKNOWLEDGE);
    w(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, features as u32);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    w(
        t,
        REG_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, sel: u32, tq: &TestQueue, size: u32) {
    let (d, a, u) = tq.addrs();
    w(t, REG_QUEUE_SEL, sel);
    w(t, REG_QUEUE_NUM, size);
    w(t, REG_QUEUE_DESC_LOW, d as u32);
    w(t, REG_QUEUE_DESC_HIGH, (d >> 32) as u32);
    w(t, REG_QUEUE_AVAIL_LOW, a as u32);
    w(t, REG_QUEUE_AVAIL_HIGH, (a >> 32) as u32);
    w(t, REG_QUEUE_USED_LOW, u as u32);
    w(t, REG_QUEUE_USED_HIGH, (u >> 32) as u32);
    w(t, REG_QUEUE_READY, 1);
}

const FEATURES_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

#[test]
fn identity_registers() {
    let (mut t, _, _) = transport();
    assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, REG_VERSION), 2);
    assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
    assert_eq!(r(&mut t, REG_VENDOR_ID), VENDOR_ID);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1 << 3);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
    w(&mut t, REG_DEVICE_FEATURES_SEL, 7);
    assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
    w(&mut t, REG_QUEUE_SEL, 1);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 8);
    w(&mut t, REG_QUEUE_SEL, 2);
    assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
    assert_eq!(r(&mut t, REG_SHM_LEN_LOW), u32::MAX);
    // Odd sizes and offsets read zero and never panic.
    let mut b = [0xffu8; 2];
    t.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    t.read(0x2, &mut b);
    assert_eq!(b, [0; 4]);
    t.read(0xfff, &mut [0u8; 8]);
    t.write(0x3, &[1, 2, 3]);
}

#[test]
fn full_negotiation_activates_with_queues() {
    let (mut t, dev, _) = transport();
    let mem = test_mem();
    let q0 = TestQueue::new(&mem, 0x10000, 16);
    let q1 = TestQueue::new(&mem, 0x20000, 8);
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 3);
    assert_eq!(r(&mut t, REG_STATUS), FEATURES_OK);
    setup_queue(&mut t, 0, &q0, 16);
    setup_queue(&mut t, 1, &q1, 4);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
    w(&mut t, REG_STATUS, FEATURES_OK | status::DRIVER_OK);
    assert_eq!(r(&mut t, REG_STATUS), FEATURES_OK | status::DRIVER_OK);
    assert_eq!(
        dev.lock().unwrap().activations,
        vec![(VIRTIO_F_VERSION_1 | 1 << 3, vec![16, 4])]
    );
    // Queue registers are frozen after DRIVER_OK.
    w(&mut t, REG_QUEUE_SEL, 0);
    w(&mut t, REG_QUEUE_NUM, 2);
    w(&mut t, REG_QUEUE_READY, 0);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
    // Reset on 0.
    w(&mut t, REG_STATUS, 0);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    assert_eq!(dev.lock().unwrap().resets, 1);
}

#[test]
fn features_without_version_1_or_unknown_are_refused() {
    let (mut t, _, _) = transport();
    negotiate(&mut t, 1 << 3);
    assert_eq!(r(&mut t, REG_STATUS), status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, REG_STATUS, 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 4);
    assert_eq!(r(&mut t, REG_STATUS), status::ACKNOWLEDGE | status::DRIVER);
    // Features cannot change once FEATURES_OK is set.
    w(&mut t, REG_STATUS, 0);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
    w(&mut t, REG_DRIVER_FEATURES, 1 << 3);
    assert_eq!(t.acked_features, VIRTIO_F_VERSION_1);
}

#[test]
fn out_of_order_status_is_ignored() {
    let (mut t, dev, _) = transport();
    w(&mut t, REG_STATUS, status::DRIVER_OK);
    assert_eq!(r(&mut t, REG_STATUS), 0);
    w(&mut t, REG_STATUS, status::ACKNOWLEDGE);
    w(
        &mut t,
        REG_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(r(&mut t, REG_STATUS), status::ACKNOWLEDGE);
    assert!(dev.lock().unwrap().activations.is_empty());
    w(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::FAILED);
    assert_eq!(r(&mut t, REG_STATUS), status::ACKNOWLEDGE | status::FAILED);
}

#[test]
fn bad_queue_values_need_reset() {
    for (reg, val) in [
        (REG_QUEUE_NUM, 3),        // not a power of two
        (REG_QUEUE_NUM, 32),       // above the maximum
        (REG_QUEUE_NUM, 0x10000),  // above u16
        (REG_QUEUE_DESC_LOW, 0x8), // misaligned
        (REG_QUEUE_AVAIL_LOW, 0x1),
        (REG_QUEUE_USED_LOW, 0x2),
    ] {
        let (mut t, _, irq) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        w(&mut t, reg, val);
        assert_eq!(
            r(&mut t, REG_STATUS),
            FEATURES_OK | status::DEVICE_NEEDS_RESET
        );
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        // A reset clears it.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }
}

#[test]
fn queue_outside_memory_is_rejected() {
    let (mut t, dev, _) = transport();
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, REG_QUEUE_SEL, 0);
    w(&mut t, REG_QUEUE_NUM, 16);
    w(&mut t, REG_QUEUE_DESC_HIGH, 1); // 4 GiB: no RAM there
    w(&mut t, REG_QUEUE_READY, 1);
    assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    assert_ne!(r(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    w(&mut t, REG_STATUS, FEATURES_OK | status::DRIVER_OK);
    assert_eq!(r(&mut t, REG_STATUS) & status::DRIVER_OK, 0);
    assert!(dev.lock().unwrap().activations.is_empty());
}

#[test]
fn refused_activation_needs_reset() {
    let (mut t, dev, _) = transport();
    dev.lock().unwrap().refuse = true;
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    w(&mut t, REG_STATUS, FEATURES_OK | status::DRIVER_OK);
    assert_eq!(
        r(&mut t, REG_STATUS),
        FEATURES_OK | status::DEVICE_NEEDS_RESET
    );
}

#[test]
fn notify_interrupt_and_config() {
    let (mut t, _, _) = transport();
    w(&mut t, NOTIFY_REG_OFFSET, 1);
    w(&mut t, NOTIFY_REG_OFFSET, 9); // no such queue: ignored
    let evts: Vec<_> = t
        .queue_notify_events()
        .map(|(e, d)| (e.try_clone().unwrap(), d))
        .collect();
    assert_eq!(evts.len(), 2);
    assert_eq!(evts[1].1, 1);
    assert_eq!(evts[1].0.read().unwrap(), 1);

    t.interrupt().signal_used_queue();
    t.interrupt().signal_config_change();
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 3);
    assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 1);
    w(&mut t, REG_INTERRUPT_ACK, 1);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 2);

    // Config writes need the DRIVER status bit.
    t.write(CONFIG_SPACE_OFFSET + 1, &[7]);
    w(&mut t, REG_STATUS, status::ACKNOWLEDGE);
    w(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    t.write(CONFIG_SPACE_OFFSET + 2, &[5, 6]);
    let mut b = [0u8; 4];
    t.read(CONFIG_SPACE_OFFSET, &mut b);
    assert_eq!(b, [0, 0, 5, 6]);
}

#[test]
fn legacy_only_devices_are_refused() {
    struct Legacy;
    impl VirtioDevice for Legacy {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8]
        }
        fn avail_features(&self) -> u64 {
            0
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn activate(&mut self, _: ActivateContext) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
    }
    let irq = Arc::new(IrqFd::new(5).unwrap());
    let r = MmioTransport::new(test_mem(), Arc::new(Mutex::new(Legacy)), irq);
    assert!(matches!(r, Err(MmioError::NotModern)));
}
