use serde_json::json;

use super::*;
use crate::oci::translate::test_specs::spec as spec_with;

fn check(j: Value) -> Result<(), ValidateError> {
    spec(&spec_with(j))
}

fn process(extra: Value) -> Value {
    let mut p = json!({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    json!({ "process": p })
}

fn linux(l: Value) -> Value {
    json!({ "linux": l })
}

#[test]
fn a_minimal_and_a_full_spec_pass() {
    check(json!({})).unwrap();
    check(json!({
        "hostname": "h".repeat(64),
        "domainname": "example.org",
        "process": {"args": ["sh", "-c", "true"], "cwd": "/srv", "env": ["A=", "PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
            "oomScoreAdj": -1000},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "ipc"},
                                 {"type": "network"}, {"type": "user"}],
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1", "fs.mqueue.msg_max": "9",
                       "kernel/hostname": "x"},
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536},
                            {"containerID": 65536, "hostID": 0, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}
    }))
    .unwrap();
}

#[test]
fn process_problems() {
    let cases = [
        (json!({"args": []}), ValidateError::NoArgs),
        (json!({"args": null}), ValidateError::NoArgs),
        (json!({"args": [""]}), ValidateError::EmptyArg0),
        (
            json!({"args": ["a\0b"]}),
            ValidateError::Nul("process.args".into()),
        ),
        (
            json!({"cwd": "work"}),
            ValidateError::RelativeCwd("work".into()),
        ),
        (json!({"cwd": ""}), ValidateError::RelativeCwd("".into())),
        (
            json!({"env": ["NOVALUE"]}),
            ValidateError::BadEnv("NOVALUE".into()),
        ),
        (json!({"env": ["=x"]}), ValidateError::BadEnv("=x".into())),
        (
            json!({"oomScoreAdj": 1001}),
            ValidateError::OomScoreAdj(1001),
        ),
        (
            json!({"rlimits": [{"type": "RLIMIT_CORE", "soft": 2, "hard": 1}]}),
            ValidateError::RlimitSoftAboveHard {
                name: "RLIMIT_CORE".into(),
                soft: 2,
                hard: 1,
            },
        ),
    ];
    for (p, want) in cases {
        assert_eq!(check(process(p.clone())), Err(want), "{p}");
    }
}

#[test]
fn uts_names_need_a_uts_namespace_and_fit_the_kernel() {
    assert_eq!(
        check(json!({"hostname": "h".repeat(65), "linux": {"namespaces": [{"type": "uts"}]}})),
        Err(ValidateError::NameTooLong {
            field: "hostname",
            len: 65
        })
    );
    assert_eq!(
        check(json!({"hostname": "box"})),
        Err(ValidateError::NeedsUts("hostname"))
    );
    assert_eq!(
        check(json!({"domainname": "d".repeat(5000)})),
        Err(ValidateError::NameTooLong {
            field: "domainname",
            len: 5000
        })
    );
    // An empty hostname asks for nothing.
    check(json!({"hostname": ""})).unwrap();
}

#[test]
fn mount_destinations_are_absolute_and_stay_inside() {
    let m = |d: &str| json!({"mounts": [{"destination": d, "type": "tmpfs", "source": "tmpfs"}]});
    assert_eq!(
        check(m("tmp")),
        Err(ValidateError::RelativeMount("tmp".into()))
    );
    assert_eq!(
        check(m("/../../etc")),
        Err(ValidateError::DotDotMount("/../../etc".into()))
    );
    assert_eq!(
        check(m("/a/../b")),
        Err(ValidateError::DotDotMount("/a/../b".into()))
    );
    check(m("/a/..b/c.")).unwrap();
}

#[test]
fn sysctls_follow_the_namespaces() {
    let s = |name: &str, ns: Value| linux(json!({"sysctl": {name: "1"}, "namespaces": ns}));
    let none = json!([]);
    let cases = [
        ("kernel.msgmax", "IPC"),
        ("fs.mqueue.queues_max", "IPC"),
        ("net.core.somaxconn", "network"),
        ("kernel.domainname", "UTS"),
    ];
    for (name, ns) in cases {
        assert_eq!(
            check(s(name, none.clone())),
            Err(ValidateError::SysctlNeedsNs {
                name: name.into(),
                ns
            }),
            "{name}"
        );
    }
    assert_eq!(
        check(s(
            "vm.swappiness",
            json!([{"type": "ipc"}, {"type": "network"}])
        )),
        Err(ValidateError::SysctlNotNamespaced("vm.swappiness".into()))
    );
    check(s("net/ipv4/ip_forward", json!([{"type": "network"}]))).unwrap();
}

#[test]
fn namespaces_and_id_mappings() {
    assert_eq!(
        check(linux(
            json!({"namespaces": [{"type": "pid"}, {"type": "pid"}]})
        )),
        Err(ValidateError::DuplicateNamespace("pid".into()))
    );
    let maps = |m: Value, ns: Value| linux(json!({"uidMappings": m, "namespaces": ns}));
    let user = json!([{"type": "user"}]);
    let one = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
    assert_eq!(
        check(maps(one.clone(), json!([]))),
        Err(ValidateError::MappingWithoutUserNs("uidMappings"))
    );
    assert_eq!(
        check(maps(one, user.clone())),
        Err(ValidateError::UserNsWithoutMapping("gidMappings"))
    );
    assert_eq!(
        check(linux(json!({"namespaces": user.clone()}))),
        Err(ValidateError::UserNsWithoutMapping("uidMappings"))
    );
    assert_eq!(
        check(maps(
            json!([{"containerID": 0, "hostID": 1, "size": 0}]),
            user.clone()
        )),
        Err(ValidateError::EmptyMapping {
            field: "uidMappings"
        })
    );
    assert_eq!(
        check(maps(
            json!([{"containerID": 0, "hostID": 4294967295u32, "size": 2}]),
            user.clone()
        )),
        Err(ValidateError::MappingOverflow {
            field: "uidMappings",
            start: 4294967295,
            size: 2
        })
    );
    assert_eq!(
        check(maps(
            json!([{"containerID": 0, "hostID": 1000, "size": 10},
                   {"containerID": 5, "hostID": 5000, "size": 10}]),
            user
        )),
        Err(ValidateError::MappingOverlap("uidMappings"))
    );
}

#[test]
fn a_spec_without_a_mount_namespace_is_refused() {
    // Built by hand: the test helper adds a mount namespace.
    let bare: Spec = serde_json::from_value(json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "uts"}]},
    }))
    .unwrap();
    assert_eq!(spec(&bare), Err(ValidateError::NoMountNamespace));
    let mut none = bare.clone();
    none.set_linux(None);
    assert_eq!(spec(&none), Err(ValidateError::NoMountNamespace));
    let e = ValidateError::NoMountNamespace.to_string();
    assert!(e.contains(r#"{"type": "mount"}"#), "{e}");
}

#[test]
fn raw_rlimit_and_capability_names() {
    let caps = |c: Value| json!({"process": {"capabilities": {"bounding": c}}});
    raw_names(&caps(json!(["CAP_CHOWN", "CAP_BPF"]))).unwrap();
    assert_eq!(
        raw_names(&caps(json!(["CAP_FLY"]))),
        Err(ValidateError::BadCapability("CAP_FLY".into()))
    );
    assert_eq!(
        raw_names(&caps(json!(["chown"]))),
        Err(ValidateError::BadCapability("chown".into()))
    );
    assert_eq!(
        raw_names(&caps(json!("CAP_CHOWN"))),
        Err(ValidateError::NotStrings(
            "process.capabilities.bounding".into()
        ))
    );
    let rl = |t: &str, u: &str| {
        json!({"process": {"rlimits": [{"type": t, "soft": 1, "hard": 1},
                                       {"type": u, "soft": 1, "hard": 1}]}})
    };
    raw_names(&rl("RLIMIT_NOFILE", "RLIMIT_CORE")).unwrap();
    assert_eq!(
        raw_names(&rl("RLIMIT_NOFILE", "RLIMIT_FOO")),
        Err(ValidateError::BadRlimit("RLIMIT_FOO".into()))
    );
    assert_eq!(
        raw_names(&rl("RLIMIT_CORE", "RLIMIT_CORE")),
        Err(ValidateError::DuplicateRlimit("RLIMIT_CORE".into()))
    );
}

#[test]
fn every_message_is_one_line() {
    let errors = [
        check(process(json!({"env": ["A\nB"]}))).unwrap_err(),
        check(json!({"hostname": "h".repeat(5000)})).unwrap_err(),
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
    }
}

#[test]
fn lsm_settings_are_listed_as_ignored() {
    assert!(ignored_lsm_settings(&spec_with(json!({}))).is_empty());
    let s: Spec = serde_json::from_value(json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "apparmorProfile": "containers-default-0.50",
            "selinuxLabel": "system_u:system_r:container_t:s0"},
        "root": {"path": "rootfs"},
        "linux": {"mountLabel": "system_u:object_r:container_file_t:s0", "namespaces": []},
    }))
    .unwrap();
    let w = ignored_lsm_settings(&s);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].starts_with("process.apparmorProfile \"containers-default-0.50\" is ignored"));
    assert!(w[1].starts_with("process.selinuxLabel "));
    assert!(w[2].starts_with("linux.mountLabel "));
    assert!(w[2].contains("no AppArmor or SELinux"));
}
