//! The build recipe: `VmConfig` in, a ready-to-run `Vm` out, as a straight line of small
//! steps (KVM → memory → VM → legacy devices → kernel/initrd → boot structures → vCPUs).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::{self, BootError, BootParamsInput, LoadedInitrd, LoadedKernel};
use crate::bus::{Bus, BusError, Buses};
use crate::compat::{self, HostCompatProfile};
use crate::config::{
    ConfigError, DiskConfig, FsConfig, NetConfig, SerialOutput, VmConfig, VsockConfig,
};
use crate::cpu::{regs, CpuError, CpuTemplate};
use crate::devices::interrupt::IrqFd;
use crate::devices::legacy::cmos::Cmos;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{SerialPort, SerialSink};
use crate::devices::virtio::attach::{attach_virtio_mmio, AttachError, VirtioMmioAllocator};
use crate::devices::virtio::blk::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{tap::Tap, tap::TapError, Net, NetError};
use crate::devices::virtio::rng::{Rng, RngError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::kvm::{KvmContext, KvmError};
use crate::layout::{
    CMOS_PORT, COM1_IRQ, COM1_PORT, I8042_DATA_PORT, KVM_IDENTITY_MAP_START, KVM_TSS_START,
};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::mptable::{self, MptableError};
use crate::persist::{self, CpuProfile, PersistError, RestoreOverrides};
use crate::stop::StopSignal;
use crate::vcpu::Vcpu;
use crate::vm::{Vm, VmParts};

pub use vmm_api::config::DEFAULT_CMDLINE;

/// Always appended: reset through the i8042 (a clean VMM exit) and reboot at once on panic
/// (which the serial watcher has already noted).
pub const REQUIRED_CMDLINE: &str = "reboot=k panic=-1";

/// Errors building a VM; each message says what failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot set up the VM's {what}: {err}")]
    Vm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("cannot open serial output {path}: {err}")]
    SerialFile {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start the device event loop: {0}")]
    EventLoop(#[from] EventLoopError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("disk {path}: {err}")]
    Disk {
        path: std::path::PathBuf,
        err: BlockError,
    },
    #[error("vsock {path}: {err}")]
    Vsock {
        path: std::path::PathBuf,
        err: VsockError,
    },
    #[error("virtio-fs {socket}: {err}")]
    Fs {
        socket: std::path::PathBuf,
        err: FsError,
    },
    #[error("TAP {tap}: {err}")]
    Tap { tap: String, err: TapError },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Persist(#[from] PersistError),
}

fn vm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |err| BuildError::Vm { what, err }
}

/// Builds a VM from its config, ready for `Vm::run`.
pub fn build(config: &VmConfig) -> Result<Vm, BuildError> {
    config.validate()?;
    let kvm = KvmContext::open()?;
    kvm.check_vcpus(config.vcpus)?;
    let profile = compat::resolve_for_host(config.compat_profile);
    if let Some(p) = &profile {
        log::info!("host-compatibility profile {} is on", p.name);
    }
    let mem = memory::create_guest_memory(config.mem_mib)?;
    let vm_fd = create_vm(&kvm, &mem)?;
    let stop = Arc::new(StopSignal::new().map_err(BuildError::EventFd)?);
    let devices = attach_devices(config, &vm_fd, &mem, &stop)?;

    let kernel = boot::load_kernel(&mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&mem, path, &kernel)?),
        None => None,
    };
    let template = CpuTemplate::new(kvm.kvm(), config.vcpus, profile.clone())?;
    let vcpus = create_vcpus(&vm_fd, &template, config.vcpus, kernel.entry)?;
    let compat_args = compat_cmdline(profile.as_ref(), &vcpus[0].fd);
    let cmdline = compose_cmdline(config.cmdline.as_deref(), &compat_args, &devices.cmdline);
    configure_boot(&mem, &kernel, initrd, &cmdline)?;
    mptable::write(&mem, config.vcpus)?;

    Ok(Vm::new(VmParts {
        vm_fd,
        mem,
        vcpus,
        buses: devices.buses,
        stop,
        event_loop: devices.event_loop,
        transports: devices.transports,
        msr_indices: template.msr_indices().to_vec(),
        cpu_profile: cpu_profile(&template, profile.as_ref()),
        config: config.clone(),
    }))
}

/// How long the steps of `build_from_snapshot` took, in ms from its start.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RestoreTimings {
    /// State file read and checked (format, CPU profile, kernel).
    pub checked_ms: f64,
    /// Guest memory mapped from the memory file.
    pub memory_mapped_ms: f64,
    /// Devices attached and every vCPU's and the VM's state set: ready to run.
    pub state_restored_ms: f64,
}

/// Builds a VM from the snapshot in `dir` (see `persist`), with `overrides` applied to its
/// config; it continues where the snapshot was taken once `Vm::run` starts it. Shares the
/// device attachment with `build`; the kernel is not loaded, RAM comes from the memory file.
pub fn build_from_snapshot(
    dir: &Path,
    overrides: &RestoreOverrides,
) -> Result<(Vm, RestoreTimings), BuildError> {
    let started = Instant::now();
    let ms = || started.elapsed().as_secs_f64() * 1000.0;
    let snap = persist::read_snapshot(dir)?;
    let mut config = snap.config;
    overrides.apply(&mut config);
    config.validate()?;
    let kvm = KvmContext::open()?;
    kvm.check_vcpus(config.vcpus)?;
    let profile = compat::resolve_for_host(config.compat_profile);
    let template = CpuTemplate::new(kvm.kvm(), config.vcpus, profile.clone())?;
    let cpu_profile = cpu_profile(&template, profile.as_ref());
    persist::check_cpu_profile(dir, &snap.header.cpu_profile, &cpu_profile)?;
    persist::check_kernel(dir, &snap.header.kernel, &config.kernel)?;
    let checked_ms = ms();

    let mem_path = dir.join(persist::MEMORY_FILE);
    // vhost-user backends map guest RAM from its fd: they need shared memory, not a
    // private mapping of the file (see `persist::memory`).
    let mem = if config.fs.is_empty() {
        persist::memory::map_memory_file(&mem_path, config.mem_mib << 20)
    } else {
        persist::memory::copy_memory_file(&mem_path, config.mem_mib)
    }
    .map_err(PersistError::from)?;
    let memory_mapped_ms = ms();
    let vm_fd = create_vm(&kvm, &mem)?;
    let stop = Arc::new(StopSignal::new().map_err(BuildError::EventFd)?);
    let devices = attach_devices(&config, &vm_fd, &mem, &stop)?;
    let vcpus = snap
        .vcpus
        .iter()
        .map(|state| {
            let fd = vm_fd
                .create_vcpu(u64::from(state.id))
                .map_err(vm_err("vCPU"))?;
            persist::vcpu::restore(&fd, state).map_err(PersistError::from)?;
            Ok(Vcpu { id: state.id, fd })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    persist::vm::restore(&vm_fd, &snap.vm).map_err(PersistError::from)?;
    // Devices last: re-activating them may raise interrupts, which the restored interrupt
    // controllers must see.
    persist::restore_devices(dir, &devices.transports, &snap.devices)?;
    let vm = Vm::new(VmParts {
        vm_fd,
        mem,
        vcpus,
        buses: devices.buses,
        stop,
        event_loop: devices.event_loop,
        transports: devices.transports,
        msr_indices: template.msr_indices().to_vec(),
        cpu_profile,
        config,
    });
    let timings = RestoreTimings {
        checked_ms,
        memory_mapped_ms,
        state_restored_ms: ms(),
    };
    Ok((vm, timings))
}

/// The devices of a VM being built, and what the kernel command line must announce.
struct AttachedDevices {
    buses: Buses,
    event_loop: EventLoop,
    cmdline: String,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

/// Attaches the legacy devices and the config's virtio devices (same order, addresses and
/// interrupts on every build, which restores rely on).
fn attach_devices(
    config: &VmConfig,
    vm_fd: &VmFd,
    mem: &GuestMemory,
    stop: &Arc<StopSignal>,
) -> Result<AttachedDevices, BuildError> {
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    attach_serial(vm_fd, &mut pio, &config.serial, stop.clone())?;
    attach_i8042(&mut pio, stop.clone())?;
    attach_cmos(&mut pio)?;

    let event_loop = EventLoop::start()?;
    let mut virtio = VirtioSetup {
        vm: vm_fd,
        mmio: &mut mmio,
        cmdline: String::new(),
        slots: VirtioMmioAllocator::new(),
        event_loop: &event_loop,
        mem,
        transports: Vec::new(),
    };
    for (i, disk) in config.disks.iter().enumerate() {
        attach_block(&mut virtio, i, disk)?;
    }
    if let Some(vsock) = &config.vsock {
        attach_vsock(&mut virtio, vsock)?;
    }
    if config.rng {
        attach_rng(&mut virtio)?;
    }
    for net in &config.net {
        attach_net(&mut virtio, net)?;
    }
    for fs in &config.fs {
        attach_fs(&mut virtio, fs)?;
    }
    let (cmdline, transports) = (virtio.cmdline, virtio.transports);
    Ok(AttachedDevices {
        buses: Buses { pio, mmio },
        event_loop,
        cmdline,
        transports,
    })
}

/// The CPU profile snapshots are checked against: vCPU 0's CPUID as configured here.
fn cpu_profile(template: &CpuTemplate, profile: Option<&HostCompatProfile>) -> CpuProfile {
    CpuProfile::of(profile.map(|p| p.name), template.cpuid(0).as_slice())
}

/// Creates the KVM VM with its in-kernel interrupt controllers and timer, and maps RAM.
fn create_vm(kvm: &KvmContext, mem: &GuestMemory) -> Result<VmFd, BuildError> {
    let vm = kvm.create_vm()?;
    vm.set_tss_address(KVM_TSS_START as usize)
        .map_err(vm_err("TSS address"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(vm_err("identity map address"))?;
    vm.create_irq_chip()
        .map_err(vm_err("interrupt controller"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(vm_err("PIT timer"))?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
        // the returned `Vm` keeps alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(r) }.map_err(vm_err("guest memory slot"))?;
    }
    Ok(vm)
}

/// COM1 at 0x3f8, IRQ 4, writing to the configured destination.
fn attach_serial(
    vm: &VmFd,
    pio: &mut Bus,
    output: &SerialOutput,
    stop: Arc<StopSignal>,
) -> Result<(), BuildError> {
    let out: Option<Box<dyn Write + Send>> = match output {
        SerialOutput::Stdout => Some(Box::new(std::io::stdout())),
        SerialOutput::File(path) => Some(Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|err| BuildError::SerialFile {
                    path: path.clone(),
                    err,
                })?,
        )),
        SerialOutput::Off => None,
    };
    let irq = IrqFd::new(COM1_IRQ).map_err(BuildError::EventFd)?;
    vm.register_irqfd(irq.eventfd(), irq.gsi())
        .map_err(vm_err("serial interrupt"))?;
    let port = SerialPort::new(Arc::new(irq), SerialSink::new(out, stop));
    pio.insert(Arc::new(Mutex::new(port)), u64::from(COM1_PORT), 8)?;
    Ok(())
}

/// The i8042 at 0x60..0x64: its reset command ends the VM cleanly.
fn attach_i8042(pio: &mut Bus, stop: Arc<StopSignal>) -> Result<(), BuildError> {
    pio.insert(
        Arc::new(Mutex::new(I8042::new(stop))),
        u64::from(I8042_DATA_PORT),
        5,
    )?;
    Ok(())
}

/// What attaching a virtio device needs from the build in progress.
struct VirtioSetup<'a> {
    vm: &'a VmFd,
    mmio: &'a mut Bus,
    /// `virtio_mmio.device=` announcements for the kernel command line.
    cmdline: String,
    slots: VirtioMmioAllocator,
    event_loop: &'a EventLoop,
    mem: &'a GuestMemory,
    /// The transports attached so far, in attach order (what a snapshot saves).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl VirtioSetup<'_> {
    fn attach<D>(&mut self, device: D) -> Result<(), BuildError>
    where
        D: crate::devices::virtio::VirtioDevice
            + event_manager::MutEventSubscriber
            + Send
            + 'static,
    {
        let (_, transport) = attach_virtio_mmio(
            self.vm,
            self.mmio,
            &mut self.cmdline,
            &mut self.slots,
            self.event_loop,
            self.mem,
            Arc::new(Mutex::new(device)),
        )?;
        self.transports.push(transport);
        Ok(())
    }
}

/// A virtio-blk disk over a raw host file.
fn attach_block(v: &mut VirtioSetup, index: usize, disk: &DiskConfig) -> Result<(), BuildError> {
    let id = disk.id.clone().unwrap_or_else(|| format!("disk{index}"));
    let dev = Block::new(&disk.path, disk.read_only, &id).map_err(|err| BuildError::Disk {
        path: disk.path.clone(),
        err,
    })?;
    v.attach(dev)
}

/// virtio-vsock over the hybrid Unix-socket backend.
fn attach_vsock(v: &mut VirtioSetup, cfg: &VsockConfig) -> Result<(), BuildError> {
    raise_fd_limit();
    let dev = Vsock::new(cfg.guest_cid, &cfg.uds_path).map_err(|err| BuildError::Vsock {
        path: cfg.uds_path.clone(),
        err,
    })?;
    v.attach(dev)
}

/// virtio-rng fed from the host's getrandom.
fn attach_rng(v: &mut VirtioSetup) -> Result<(), BuildError> {
    v.attach(Rng::new()?)
}

/// virtio-net on a TAP interface.
fn attach_net(v: &mut VirtioSetup, cfg: &NetConfig) -> Result<(), BuildError> {
    let tap = Tap::open(&cfg.tap).map_err(|err| BuildError::Tap {
        tap: cfg.tap.clone(),
        err,
    })?;
    v.attach(Net::new(Box::new(tap), cfg.mac_bytes()?)?)
}

/// virtio-fs served by a vhost-user backend, which must be listening now: a missing or
/// unusable backend fails the build rather than the guest's mount.
fn attach_fs(v: &mut VirtioSetup, cfg: &FsConfig) -> Result<(), BuildError> {
    let dev = Fs::connect(
        &cfg.socket,
        &cfg.tag,
        cfg.num_request_queues,
        cfg.queue_size,
    )
    .map_err(|err| BuildError::Fs {
        socket: cfg.socket.clone(),
        err,
    })?;
    v.attach(dev)
}

/// Each vsock connection holds host file descriptors (up to 1023 streams plus pending
/// handshakes): lift the soft open-file limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the plain struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The compat profile's command-line switches, with the TSC rate KVM gives this vCPU.
fn compat_cmdline(profile: Option<&HostCompatProfile>, vcpu: &VcpuFd) -> String {
    profile
        .map(|p| p.cmdline(vcpu.get_tsc_khz().ok()))
        .unwrap_or_default()
}

/// The guest command line `config` produces (without its devices' announcements), as
/// `build` would compose it on this host; for showing and for peers in benchmarks.
pub fn guest_cmdline(config: &VmConfig) -> Result<String, BuildError> {
    let kvm = KvmContext::open()?;
    let profile = compat::resolve_for_host(config.compat_profile);
    let vm = kvm.create_vm()?;
    vm.create_irq_chip()
        .map_err(vm_err("interrupt controller"))?;
    let fd = vm.create_vcpu(0).map_err(vm_err("vCPU"))?;
    let compat_args = compat_cmdline(profile.as_ref(), &fd);
    Ok(compose_cmdline(config.cmdline.as_deref(), &compat_args, ""))
}

/// The CMOS clock at 0x70-0x71.
fn attach_cmos(pio: &mut Bus) -> Result<(), BuildError> {
    pio.insert(
        Arc::new(Mutex::new(Cmos::default())),
        u64::from(CMOS_PORT),
        2,
    )?;
    Ok(())
}

/// The guest command line: the configured (or default) base, then what the VMM requires,
/// the compat profile's switches and the devices' announcements. Arguments for init (after
/// a `--` in the base) stay last, where the kernel expects them.
pub fn compose_cmdline(base: Option<&str>, compat_args: &str, device_args: &str) -> String {
    let base = base.unwrap_or(DEFAULT_CMDLINE);
    let words: Vec<&str> = base.split_whitespace().collect();
    let (kernel_words, init_words) = match words.iter().position(|w| *w == "--") {
        Some(i) => (&words[..i], Some(&words[i + 1..])),
        None => (&words[..], None),
    };
    let mut parts = vec![kernel_words.join(" ")];
    parts.push(REQUIRED_CMDLINE.to_string());
    parts.push(compat_args.trim().to_string());
    parts.push(device_args.trim().to_string());
    if let Some(init) = init_words {
        parts.push(format!("-- {}", init.join(" ")).trim_end().to_string());
    }
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

/// Writes the command line, RNG seed, boot page tables and zero page.
fn configure_boot(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline: &str,
) -> Result<(), BuildError> {
    let cmdline_len = boot::write_cmdline(mem, cmdline)?;
    let seed = boot::host_random_seed()?;
    let setup_data = boot::write_rng_seed(mem, &seed)?;
    regs::write_boot_tables(mem)?;
    let e820 = boot::e820_map(mem);
    let params = boot::build_boot_params(&BootParamsInput {
        kernel,
        cmdline_len,
        initrd,
        setup_data: Some(setup_data),
        e820: &e820,
    });
    boot::write_boot_params(mem, params)?;
    Ok(())
}

/// Creates and configures the vCPUs; vCPU 0 starts at the kernel entry.
fn create_vcpus(
    vm: &VmFd,
    template: &CpuTemplate,
    count: u8,
    entry: u64,
) -> Result<Vec<Vcpu>, BuildError> {
    (0..count)
        .map(|id| {
            let fd = vm.create_vcpu(u64::from(id)).map_err(vm_err("vCPU"))?;
            template.configure(&fd, id, (id == 0).then_some(entry))?;
            Ok(Vcpu { id, fd })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_order_lets_required_switches_win() {
        let c = compose_cmdline(Some("console=ttyS0 panic=0"), "", "");
        assert_eq!(c, "console=ttyS0 panic=0 reboot=k panic=-1");
        let p = HostCompatProfile::emulated_kernel_mode().cmdline(None);
        let c = compose_cmdline(None, &p, " virtio_mmio.device=4K@0xd0000000:5");
        assert!(c.starts_with(DEFAULT_CMDLINE), "{c}");
        assert!(c.contains(" clearcpuid="), "{c}");
        assert!(c.ends_with("virtio_mmio.device=4K@0xd0000000:5"), "{c}");
        assert_eq!(compose_cmdline(Some("  "), "", ""), REQUIRED_CMDLINE);
    }

    #[test]
    fn init_arguments_stay_last() {
        let c = compose_cmdline(
            Some("console=ttyS0 x=1 -- bench  fast"),
            "",
            " virtio_mmio.device=4K@0xd0000000:5",
        );
        assert_eq!(
            c,
            "console=ttyS0 x=1 reboot=k panic=-1 virtio_mmio.device=4K@0xd0000000:5 -- bench fast"
        );
    }
}
