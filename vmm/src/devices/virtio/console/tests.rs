use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{
    activate_ctx, test_interrupt, test_mem, TestQueue, WRITE,
};

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn output_reaches_the_host_writer() {
    let mem = test_mem();
    let out = SharedBuf::default();
    let mut c = Console::new(Box::new(out.clone()), None).unwrap();
    let rxq = TestQueue::new(&mem, 0x10_0000, 16);
    let mut txq = TestQueue::new(&mem, 0x20_0000, 16);
    let (interrupt, _irq) = test_interrupt();
    c.activate(activate_ctx(
        &mem,
        &[&rxq, &txq],
        interrupt,
        VIRTIO_F_VERSION_1,
    ))
    .unwrap();
    mem.write_slice(b"hello ", GuestAddress(0x1000)).unwrap();
    mem.write_slice(b"world\n", GuestAddress(0x2000)).unwrap();
    txq.add_chain(&[(0x1000, 6, 0), (0x2000, 6, 0)]);
    txq.add_chain(&[(0x1000, 6, WRITE)]); // wrong direction: dropped
    txq.add_chain(&[(0xff_fff0, 0x100, 0)]); // runs off the end of RAM: dropped
    c.process_tx();
    assert_eq!(&*out.0.lock().unwrap(), b"hello world\n");
    assert_eq!(txq.used().len(), 3);
}

#[test]
fn input_is_delivered_through_the_event_loop() {
    let mem = test_mem();
    let (host, dev_end) = UnixStream::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    let c = Arc::new(Mutex::new(
        Console::new(Box::new(SharedBuf::default()), Some(Box::new(dev_end))).unwrap(),
    ));
    let mut em: EventManager<Arc<Mutex<Console>>> = EventManager::new().unwrap();
    em.add_subscriber(c.clone());
    let mut rxq = TestQueue::new(&mem, 0x10_0000, 16);
    let txq = TestQueue::new(&mem, 0x20_0000, 16);
    let (interrupt, irq) = test_interrupt();
    c.lock()
        .unwrap()
        .activate(activate_ctx(
            &mem,
            &[&rxq, &txq],
            interrupt,
            VIRTIO_F_VERSION_1,
        ))
        .unwrap();
    em.run_with_timeout(1000).unwrap(); // activation: input fd now polled
    (&host).write_all(b"ls\n").unwrap();
    em.run_with_timeout(1000).unwrap(); // input read, no receive buffer yet
    assert!(rxq.used().is_empty());
    rxq.add_chain(&[(0x1000, 2, WRITE), (0x2000, 64, WRITE)]);
    c.lock().unwrap().process_rx();
    assert_eq!(rxq.used(), vec![(0, 3)]);
    let mut got = [0u8; 3];
    mem.read_slice(&mut got[..2], GuestAddress(0x1000)).unwrap();
    mem.read_slice(&mut got[2..], GuestAddress(0x2000)).unwrap();
    assert_eq!(&got, b"ls\n");
    assert_eq!(irq.eventfd().read().unwrap(), 1);

    // Reset stops polling the input; closing the host end is then harmless.
    c.lock().unwrap().reset();
    em.run_with_timeout(1000).unwrap();
    drop(host);
    assert_eq!(em.run_with_timeout(10).unwrap(), 0);
}
