//! Attaching a virtio device to a VM over virtio-mmio: MMIO window, IRQ, KVM ioeventfds and
//! irqfd, the MMIO bus, the event loop and the kernel command line.
//!
//! # Call sequence (VMM builder)
//!
//! ```ignore
//! // Once, after creating the VM, its in-kernel irqchip (vm.create_irq_chip(), needed by
//! // irqfds) and guest memory, and before loading the kernel command line into memory:
//! let event_loop = EventLoop::start()?;
//! let mut slots = VirtioMmioAllocator::new();
//!
//! // Per device (any `VirtioDevice + MutEventSubscriber`, e.g. Block, Rng, Net, Vsock, Fs):
//! let blk = Arc::new(Mutex::new(Block::new(path, read_only, "rootfs")?));
//! attach_virtio_mmio(&vm, &mut mmio_bus, &mut cmdline, &mut slots, &event_loop, &mem, blk)?;
//!
//! // Then write `cmdline` into guest memory and start the vCPUs, which dispatch MMIO exits in
//! // [MMIO_GAP_START, ...) to `mmio_bus` (QueueNotify writes never exit: KVM signals the
//! // ioeventfds directly). At shutdown, `event_loop.stop()`.
//! ```
//!
//! What [`attach_virtio_mmio`] does, in order:
//! 1. takes the next window (`MMIO_GAP_START + n * VIRTIO_MMIO_WINDOW`) and IRQ
//!    (`IRQ_FIRST_VIRTIO + n`);
//! 2. creates an [`IrqFd`] and registers it: `vm.register_irqfd(eventfd, irq)`;
//! 3. builds the [`MmioTransport`] and registers each queue's notify eventfd:
//!    `vm.register_ioevent(evt, IoEventAddress::Mmio(base + 0x50), queue_index as u32)`;
//! 4. inserts the transport on the MMIO bus at `[base, base + VIRTIO_MMIO_WINDOW)`;
//! 5. hands the device to the event loop (`event_loop.add_subscriber`);
//! 6. appends ` virtio_mmio.device=4K@0x<base>:<irq>` to the command line.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};

use super::mmio::{MmioError, MmioTransport, NOTIFY_REG_OFFSET};
use super::VirtioDevice;
use crate::bus::{Bus, BusError};
use crate::devices::interrupt::IrqFd;
use crate::event_loop::{EventLoop, EventLoopError};
use crate::layout::{
    IRQ_FIRST_VIRTIO, IRQ_LAST, MMIO_GAP_START, VIRTIO_MMIO_MAX_DEVICES, VIRTIO_MMIO_WINDOW,
};
use crate::memory::GuestMemory;

/// Errors attaching a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("too many virtio devices (at most {VIRTIO_MMIO_MAX_DEVICES})")]
    NoSlot,
    #[error("cannot create the device interrupt eventfd: {0}")]
    IrqFd(std::io::Error),
    #[error("cannot register the irqfd for IRQ {0} (is the in-kernel irqchip created?): {1}")]
    RegisterIrqFd(u32, kvm_ioctls::Error),
    #[error("cannot register the queue-notify ioeventfd at {0:#x}: {1}")]
    RegisterIoEvent(u64, kvm_ioctls::Error),
    #[error("cannot create the virtio-mmio transport: {0}")]
    Transport(MmioError),
    #[error("cannot map the virtio-mmio window: {0}")]
    Bus(BusError),
    #[error("cannot hand the device to the event loop: {0}")]
    EventLoop(EventLoopError),
}

/// One device's MMIO window and interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// IOAPIC pin (GSI).
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel command-line parameter that makes Linux probe this device.
    pub fn cmdline_fragment(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size >> 10,
            self.base,
            self.irq
        )
    }
}

/// Hands out MMIO windows and IRQs to virtio devices, in order.
#[derive(Debug, Default)]
pub struct VirtioMmioAllocator {
    next: u64,
}

impl VirtioMmioAllocator {
    /// Starts at `MMIO_GAP_START` and `IRQ_FIRST_VIRTIO`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next free slot.
    pub fn allocate(&mut self) -> Result<MmioSlot, AttachError> {
        let n = self.next;
        let irq = u32::try_from(n)
            .ok()
            .and_then(|n| IRQ_FIRST_VIRTIO.checked_add(n))
            .filter(|&irq| irq <= IRQ_LAST);
        match irq {
            Some(irq) if n < VIRTIO_MMIO_MAX_DEVICES => {
                self.next += 1;
                Ok(MmioSlot {
                    base: MMIO_GAP_START + n * VIRTIO_MMIO_WINDOW,
                    size: VIRTIO_MMIO_WINDOW,
                    irq,
                })
            }
            _ => Err(AttachError::NoSlot),
        }
    }
}

/// Attaches `device` to the VM (see the module doc for the sequence). Returns its slot.
pub fn attach_virtio_mmio<D>(
    vm: &VmFd,
    mmio_bus: &mut Bus,
    cmdline: &mut String,
    slots: &mut VirtioMmioAllocator,
    event_loop: &EventLoop,
    mem: &GuestMemory,
    device: Arc<Mutex<D>>,
) -> Result<(MmioSlot, Arc<Mutex<MmioTransport>>), AttachError>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
{
    let slot = slots.allocate()?;
    let irq = Arc::new(IrqFd::new(slot.irq).map_err(AttachError::IrqFd)?);
    vm.register_irqfd(irq.eventfd(), slot.irq)
        .map_err(|e| AttachError::RegisterIrqFd(slot.irq, e))?;
    let transport =
        MmioTransport::new(mem.clone(), device.clone(), irq).map_err(AttachError::Transport)?;
    let notify = slot.base + NOTIFY_REG_OFFSET;
    for (evt, queue) in transport.queue_notify_events() {
        vm.register_ioevent(evt, &IoEventAddress::Mmio(notify), queue)
            .map_err(|e| AttachError::RegisterIoEvent(notify, e))?;
    }
    let transport = Arc::new(Mutex::new(transport));
    mmio_bus
        .insert(transport.clone(), slot.base, slot.size)
        .map_err(AttachError::Bus)?;
    event_loop
        .add_subscriber(device)
        .map_err(AttachError::EventLoop)?;
    if !cmdline.is_empty() && !cmdline.ends_with(' ') {
        cmdline.push(' ');
    }
    cmdline.push_str(&slot.cmdline_fragment());
    Ok((slot, transport))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_sequential_and_bounded() {
        let mut a = VirtioMmioAllocator::new();
        let s0 = a.allocate().unwrap();
        let s1 = a.allocate().unwrap();
        assert_eq!(s0.base, MMIO_GAP_START);
        assert_eq!(s1.base, MMIO_GAP_START + 0x1000);
        assert_eq!((s0.irq, s1.irq), (IRQ_FIRST_VIRTIO, IRQ_FIRST_VIRTIO + 1));
        assert_eq!(s1.cmdline_fragment(), "virtio_mmio.device=4K@0xd0001000:6");
        for _ in 2..VIRTIO_MMIO_MAX_DEVICES {
            a.allocate().unwrap();
        }
        assert!(matches!(a.allocate(), Err(AttachError::NoSlot)));
    }

    #[test]
    fn attach_registers_with_kvm_bus_and_cmdline() {
        use crate::devices::virtio::blk::Block;
        use crate::devices::virtio::test_utils::test_mem;
        use std::io::Write;

        // Needs /dev/kvm (CI has it): fail with the reason rather than pass unrun.
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        tmp.as_file().write_all(&[0u8; 4096]).unwrap();
        let blk = Arc::new(Mutex::new(Block::new(tmp.as_path(), false, "x").unwrap()));
        let el = EventLoop::start().unwrap();
        let mut bus = Bus::new();
        let mut cmdline = String::from("console=ttyS0");
        let mut slots = VirtioMmioAllocator::new();
        let mem = test_mem();
        let (slot, _) =
            attach_virtio_mmio(&vm, &mut bus, &mut cmdline, &mut slots, &el, &mem, blk).unwrap();
        assert_eq!(
            cmdline,
            format!(
                "console=ttyS0 virtio_mmio.device=4K@{:#x}:5",
                MMIO_GAP_START
            )
        );
        let mut magic = [0u8; 4];
        assert!(bus.read(slot.base, &mut magic));
        assert_eq!(&magic, b"virt");
        el.stop().unwrap();
    }
}
