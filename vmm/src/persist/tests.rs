use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vmm-persist-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vcpu(id: u8) -> VcpuState {
    VcpuState {
        id,
        cpuid: vec![],
        mp_state: Default::default(),
        regs: Default::default(),
        sregs: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        debugregs: Default::default(),
        lapic: Default::default(),
        msrs: vec![],
        events: Default::default(),
    }
}

fn snapshot(kernel: &Path) -> Snapshot {
    let mut config = VmConfig::new(kernel);
    config.vcpus = 2;
    config.mem_mib = 16;
    Snapshot {
        header: SnapshotHeader {
            magic: MAGIC.into(),
            format_version: FORMAT_VERSION,
            cpu_profile: CpuProfile::of(Some("emulated"), &[]),
            kernel: identify_kernel(kernel).unwrap(),
            shape: VmShape {
                vcpus: 2,
                mem_mib: 16,
            },
        },
        config,
        vm: VmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        },
        vcpus: vec![vcpu(0), vcpu(1)],
        devices: vec![],
    }
}

fn write(dir: &Path, value: &serde_json::Value) {
    std::fs::write(dir.join(STATE_FILE), serde_json::to_vec(value).unwrap()).unwrap();
}

#[test]
fn state_file_round_trips_and_other_versions_are_refused() {
    let d = Dir::new("version");
    let kernel = d.0.join("vmlinux");
    std::fs::write(&kernel, b"kernel one").unwrap();
    let snap = snapshot(&kernel);
    let mut v = serde_json::to_value(&snap).unwrap();
    write(&d.0, &v);
    let back = read_snapshot(&d.0).unwrap();
    assert_eq!(back.header, snap.header);
    assert_eq!(back.config, snap.config);

    v["header"]["format_version"] = (FORMAT_VERSION + 1).into();
    // A future version may have changed anything else too: only the header is read.
    v["vm"] = serde_json::Value::Null;
    write(&d.0, &v);
    let e = read_snapshot(&d.0).unwrap_err().to_string();
    assert!(
        e.contains(&format!("format version {}", FORMAT_VERSION + 1)),
        "{e}"
    );
    assert!(!e.contains('\n'));

    v["header"]["magic"] = "something else".into();
    write(&d.0, &v);
    assert!(matches!(
        read_snapshot(&d.0),
        Err(PersistError::NotASnapshot { .. })
    ));
}

#[test]
fn inconsistent_shapes_are_refused() {
    let d = Dir::new("shape");
    let kernel = d.0.join("vmlinux");
    std::fs::write(&kernel, b"k").unwrap();
    let mut snap = snapshot(&kernel);
    snap.vcpus.pop();
    write(&d.0, &serde_json::to_value(&snap).unwrap());
    let e = read_snapshot(&d.0).unwrap_err().to_string();
    assert!(e.contains("1 vCPU states for 2 vCPUs"), "{e}");
    let mut snap = snapshot(&kernel);
    snap.config.mem_mib = 32;
    write(&d.0, &serde_json::to_value(&snap).unwrap());
    assert!(matches!(read_snapshot(&d.0), Err(PersistError::Shape(..))));
}

#[test]
fn another_kernel_is_refused_and_a_touched_same_kernel_is_not() {
    let d = Dir::new("kernel");
    let kernel = d.0.join("vmlinux");
    std::fs::write(&kernel, b"kernel one").unwrap();
    let saved = identify_kernel(&kernel).unwrap();
    check_kernel(&d.0, &saved, &kernel).unwrap();

    // Same bytes in a new file (new inode): hashed again, accepted.
    let copy = d.0.join("vmlinux.copy");
    std::fs::write(&copy, b"kernel one").unwrap();
    check_kernel(&d.0, &saved, &copy).unwrap();

    let other = d.0.join("vmlinux.other");
    std::fs::write(&other, b"kernel two").unwrap();
    let e = check_kernel(&d.0, &saved, &other).unwrap_err();
    assert!(matches!(e, PersistError::Kernel { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("another kernel") && msg.contains(&saved.sha256[..12]),
        "{msg}"
    );
}

#[test]
fn another_cpu_profile_is_refused() {
    let d = Dir::new("cpu");
    let entry = kvm_cpuid_entry2 {
        function: 1,
        ecx: 1 << 26,
        ..Default::default()
    };
    let a = CpuProfile::of(None, &[entry]);
    let b = CpuProfile::of(None, &[kvm_cpuid_entry2 { ecx: 0, ..entry }]);
    let c = CpuProfile::of(Some("emulated-kernel-mode"), &[entry]);
    check_cpu_profile(&d.0, &a, &a.clone()).unwrap();
    assert_ne!(a.cpuid_sha256, b.cpuid_sha256);
    let e = check_cpu_profile(&d.0, &a, &b).unwrap_err().to_string();
    assert!(e.contains("CPU profile compat=none cpuid="), "{e}");
    assert!(check_cpu_profile(&d.0, &a, &c).is_err());
}

#[test]
fn a_clone_gets_its_own_macs_and_keeps_the_templates_tap_names() {
    let mut config = VmConfig::new("/k");
    for tap in ["tap_svm0", "tap_svm1"] {
        config.net.push(crate::config::NetConfig {
            tap: tap.into(),
            mac: Some("02:73:76:6d:00:01".into()),
        });
    }
    let o = RestoreOverrides {
        macs: vec!["0a:58:0a:e7:28:02".into()],
        ..Default::default()
    };
    o.apply(&mut config);
    let got: Vec<(&str, Option<&str>)> = config
        .net
        .iter()
        .map(|n| (n.tap.as_str(), n.mac.as_deref()))
        .collect();
    // In device order; a NIC without an override keeps the saved MAC. TAP names stay: the
    // clone's VMM opens the same name in its own netns.
    assert_eq!(
        got,
        [
            ("tap_svm0", Some("0a:58:0a:e7:28:02")),
            ("tap_svm1", Some("02:73:76:6d:00:01"))
        ]
    );
}
