//! The VM-wide KVM state: both PICs, the IOAPIC, the PIT and the kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Errors saving or restoring the VM-wide state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    #[error("cannot {op} the VM's {what}: {err}")]
    Ioctl {
        op: &'static str,
        what: &'static str,
        err: kvm_ioctls::Error,
    },
}

fn err(op: &'static str, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |err| VmStateError::Ioctl { op, what, err }
}

/// The in-kernel devices' state and the clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn read_chip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(err("read", what))?;
    Ok(chip)
}

/// Reads the VM-wide state (the vCPUs must be parked).
pub fn save(vm: &VmFd) -> Result<VmState, VmStateError> {
    Ok(VmState {
        pic_master: read_chip(vm, KVM_IRQCHIP_PIC_MASTER, "master PIC")?,
        pic_slave: read_chip(vm, KVM_IRQCHIP_PIC_SLAVE, "slave PIC")?,
        ioapic: read_chip(vm, KVM_IRQCHIP_IOAPIC, "IOAPIC")?,
        pit: vm.get_pit2().map_err(err("read", "PIT"))?,
        clock: vm.get_clock().map_err(err("read", "clock"))?,
    })
}

/// Sets the saved state into a VM made by `builder::create_vm`. The kvmclock is set with
/// flags 0, which keeps the saved value: the guest's monotonic clock continues where it
/// stopped (KVM_CLOCK_REALTIME would jump it by the wall-clock gap, which for a template
/// is hours). The wall clock is the agent's to set after a restore.
pub fn restore(vm: &VmFd, state: &VmState) -> Result<(), VmStateError> {
    vm.set_pit2(&state.pit).map_err(err("set", "PIT"))?;
    vm.set_irqchip(&state.pic_master)
        .map_err(err("set", "master PIC"))?;
    vm.set_irqchip(&state.pic_slave)
        .map_err(err("set", "slave PIC"))?;
    vm.set_irqchip(&state.ioapic)
        .map_err(err("set", "IOAPIC"))?;
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(err("set", "clock"))?;
    Ok(())
}
