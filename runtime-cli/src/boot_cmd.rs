//! `sandbox-vm boot`: flags (or a JSON config) to a `VmConfig`, then build and run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use vmm::config::{
    CompatSetting, DiskConfig, FsConfig, NetConfig, SerialOutput, VmConfig, VsockConfig,
};

#[derive(Clone, Copy, ValueEnum)]
enum Compat {
    Auto,
    On,
    Off,
}

#[derive(Args)]
pub struct BootArgs {
    /// Guest kernel: ELF vmlinux or bzImage
    #[arg(long, required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (uncompressed cpio is fastest)
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (replaces the default; the VMM still appends what it needs)
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1]
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest RAM in MiB [default: 128]
    #[arg(long)]
    mem_mib: Option<u64>,
    /// Serial console: "stdout", "off", or a file path to append to [default: stdout]
    #[arg(long)]
    serial: Option<String>,
    /// Host-compatibility profile for hosts whose KVM emulates guest kernel mode
    /// [default: auto = on when the CPU has no vmx/svm]
    #[arg(long, value_enum)]
    compat: Option<Compat>,
    /// Add a virtio-blk disk from a raw image file; `PATH:ro` makes it read-only (repeatable;
    /// the guest sees /dev/vda, /dev/vdb, ... in this order)
    #[arg(long = "disk", value_name = "PATH[:ro]")]
    disks: Vec<String>,
    /// Add a virtio-vsock device listening on this Unix socket (host connects and sends
    /// `CONNECT <port>`; guest connections to host port N go to `PATH_N`)
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock context ID [default: 3]
    #[arg(long, value_name = "CID", requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Add a virtio-rng device (/dev/hwrng in the guest) fed from the host's getrandom
    #[arg(long)]
    rng: bool,
    /// Add a virtio-net device on a TAP interface; `TAP,MAC` sets the guest MAC (repeatable)
    #[arg(long = "net", value_name = "TAP[,MAC]")]
    net: Vec<String>,
    /// Add a virtio-fs share served by the vhost-user backend (virtiofsd) listening on
    /// SOCKET; the guest mounts it with `mount -t virtiofs TAG DIR` (repeatable)
    #[arg(long = "fs", value_name = "SOCKET:TAG")]
    fs: Vec<String>,
    /// Read the VM config from a JSON file; flags given as well override its fields
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the guest kernel command line this configuration produces, then exit
    #[arg(long)]
    print_cmdline: bool,
}

impl BootArgs {
    /// The config file (if any) with flags applied on top.
    fn into_config(self) -> Result<VmConfig> {
        let mut c = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::new(self.kernel.clone().unwrap_or_default()),
        };
        if let Some(k) = self.kernel {
            c.kernel = k;
        }
        if self.initrd.is_some() {
            c.initrd = self.initrd;
        }
        if self.cmdline.is_some() {
            c.cmdline = self.cmdline;
        }
        if let Some(n) = self.vcpus {
            c.vcpus = n;
        }
        if let Some(m) = self.mem_mib {
            c.mem_mib = m;
        }
        if let Some(s) = self.serial {
            c.serial = match s.as_str() {
                "stdout" => SerialOutput::Stdout,
                "off" => SerialOutput::Off,
                path => SerialOutput::File(path.into()),
            };
        }
        for d in self.disks {
            let (path, read_only) = match d.strip_suffix(":ro") {
                Some(p) => (p.to_string(), true),
                None => (d, false),
            };
            c.disks.push(DiskConfig {
                path: path.into(),
                read_only,
                id: None,
            });
        }
        if let Some(uds_path) = self.vsock_uds {
            c.vsock = Some(VsockConfig {
                guest_cid: self.vsock_cid.unwrap_or(3),
                uds_path,
            });
        }
        c.rng |= self.rng;
        for n in self.net {
            let (tap, mac) = match n.split_once(',') {
                Some((t, m)) => (t.to_string(), Some(m.to_string())),
                None => (n, None),
            };
            c.net.push(NetConfig { tap, mac });
        }
        for f in self.fs {
            c.fs.push(parse_fs(&f)?);
        }
        if let Some(p) = self.compat {
            c.compat_profile = match p {
                Compat::Auto => CompatSetting::Auto,
                Compat::On => CompatSetting::On,
                Compat::Off => CompatSetting::Off,
            };
        }
        Ok(c)
    }
}

/// `SOCKET:TAG` (the last colon splits, so the socket path may contain colons).
fn parse_fs(arg: &str) -> Result<FsConfig> {
    let (socket, tag) = arg
        .rsplit_once(':')
        .filter(|(s, t)| !s.is_empty() && !t.is_empty())
        .with_context(|| format!("--fs {arg:?}: expected SOCKET:TAG"))?;
    Ok(FsConfig::new(socket, tag))
}

/// Boots the VM and maps how it ended to the process exit code.
pub fn run(args: BootArgs) -> Result<ExitCode> {
    let print_cmdline = args.print_cmdline;
    let config = args.into_config()?;
    if print_cmdline {
        println!("{}", vmm::builder::guest_cmdline(&config)?);
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let mut vm = vmm::builder::build(&config)?;
    let reason = vm.run()?;
    let secs = started.elapsed().as_secs_f64();
    if reason.is_clean() {
        eprintln!("sandbox-vm: {reason} after {secs:.1} s");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("sandbox-vm: {reason} (after {secs:.1} s)");
        Ok(ExitCode::from(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_flag_is_socket_then_tag() {
        let f = parse_fs("/run/a:b/fs.sock:share").unwrap();
        assert_eq!(f, FsConfig::new("/run/a:b/fs.sock", "share"));
        for bad in ["/run/fs.sock", "/run/fs.sock:", ":share"] {
            let e = parse_fs(bad).unwrap_err().to_string();
            assert!(e.contains("SOCKET:TAG"), "{e}");
        }
    }
}
