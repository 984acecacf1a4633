//! The malformed-bundle corpus: each bad bundle makes `sandbox-vm create` fail within a
//! second, with one line on stderr, and leaves nothing behind (no state directory, no
//! process, no mount). Runs without a guest (nothing may boot for these).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use test_support::host::{mounts_mentioning, processes_mentioning};

const BIN: &str = env!("CARGO_BIN_EXE_sandbox-vm");

/// A valid spec, as `sandbox-vm spec` would write it (trimmed).
fn good() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"]},
        "root": {"path": "rootfs"},
        "hostname": "box",
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"},
                                 {"type": "ipc"}, {"type": "network"}]}
    })
}

/// `good()` with the value at the JSON pointer `at` set to `v` (objects made as needed).
fn with(at: &str, v: Value) -> Value {
    let mut spec = good();
    let mut cur = &mut spec;
    for key in at.trim_start_matches('/').split('/') {
        if cur.get(key).is_none() {
            cur[key] = json!({});
        }
        cur = &mut cur[key];
    }
    *cur = v;
    spec
}

fn without_ns(ns: &str, at: &str, v: Value) -> Value {
    let mut spec = with(at, v);
    let list = spec["linux"]["namespaces"].as_array_mut().unwrap();
    list.retain(|n| n["type"] != ns);
    spec
}

/// What a case's bundle holds.
enum Config {
    Json(Value),
    Text(&'static str),
    Missing,
}

struct Case {
    name: &'static str,
    config: Config,
    rootfs: bool,
    /// Part of the one stderr line.
    want: &'static str,
}

fn case(name: &'static str, spec: Value, want: &'static str) -> Case {
    Case {
        name,
        config: Config::Json(spec),
        rootfs: true,
        want,
    }
}

fn rlimit(t: &str, soft: u64, hard: u64) -> Value {
    json!({"type": t, "soft": soft, "hard": hard})
}

fn corpus() -> Vec<Case> {
    let map = |c: u32, h: u32, s: u32| json!({"containerID": c, "hostID": h, "size": s});
    let mut cases = vec![
        case(
            "empty-args",
            with("/process/args", json!([])),
            "process.args must not be empty",
        ),
        case(
            "null-args",
            with("/process/args", Value::Null),
            "process.args must not be empty",
        ),
        case(
            "empty-arg0",
            with("/process/args", json!(["", "x"])),
            "process.args[0] must not be empty",
        ),
        case(
            "nul-arg",
            with("/process/args", json!(["sh", "a\u{0}b"])),
            "NUL",
        ),
        case(
            "relative-cwd",
            with("/process/cwd", json!("work")),
            "is not an absolute path",
        ),
        case(
            "empty-cwd",
            with("/process/cwd", json!("")),
            "is not an absolute path",
        ),
        case(
            "env-no-equals",
            with("/process/env", json!(["PATH=/bin", "NOVALUE"])),
            "is not KEY=VALUE",
        ),
        case(
            "env-no-key",
            with("/process/env", json!(["=value"])),
            "is not KEY=VALUE",
        ),
        case(
            "hostname-5000",
            with("/hostname", json!("h".repeat(5000))),
            "5000 bytes long",
        ),
        case(
            "hostname-65",
            with("/hostname", json!("h".repeat(65))),
            "at most 64",
        ),
        case(
            "domainname-100",
            with("/domainname", json!("d".repeat(100))),
            "domainname is 100 bytes",
        ),
        case(
            "hostname-no-uts",
            without_ns("uts", "/hostname", json!("box")),
            "needs a private UTS namespace",
        ),
        case(
            "mount-relative",
            with(
                "/mounts",
                json!([{"destination": "mnt", "type": "tmpfs", "source": "tmpfs"}]),
            ),
            "is not an absolute path",
        ),
        case(
            "mount-dotdot",
            with(
                "/mounts",
                json!([{"destination": "/../etc", "type": "tmpfs", "source": "tmpfs"}]),
            ),
            "contains '..'",
        ),
        case(
            "mount-dotdot-deep",
            with(
                "/mounts",
                json!([{"destination": "/a/../../b", "type": "tmpfs", "source": "tmpfs"}]),
            ),
            "contains '..'",
        ),
        case(
            "sysctl-ipc-no-ns",
            without_ns("ipc", "/linux/sysctl", json!({"kernel.msgmax": "1"})),
            "needs a private IPC namespace",
        ),
        case(
            "sysctl-mqueue-no-ns",
            without_ns("ipc", "/linux/sysctl", json!({"fs.mqueue.msg_max": "1"})),
            "needs a private IPC namespace",
        ),
        case(
            "sysctl-net-no-ns",
            without_ns(
                "network",
                "/linux/sysctl",
                json!({"net.ipv4.ip_forward": "1"}),
            ),
            "needs a private network namespace",
        ),
        case(
            "sysctl-hostname-no-uts",
            without_ns("uts", "/linux/sysctl", json!({"kernel.hostname": "x"})),
            "needs a private UTS namespace",
        ),
        case(
            "sysctl-global",
            with("/linux/sysctl", json!({"vm.swappiness": "10"})),
            "not in a separate kernel namespace",
        ),
        case(
            "rlimit-unknown",
            with("/process/rlimits", json!([rlimit("RLIMIT_FOO", 1, 1)])),
            "unknown rlimit \"RLIMIT_FOO\"",
        ),
        case(
            "rlimit-lowercase",
            with("/process/rlimits", json!([rlimit("rlimit_nofile", 1, 1)])),
            "unknown rlimit",
        ),
        case(
            "rlimit-duplicate",
            with(
                "/process/rlimits",
                json!([rlimit("RLIMIT_CORE", 1, 1), rlimit("RLIMIT_CORE", 2, 2)]),
            ),
            "more than once",
        ),
        case(
            "rlimit-soft-above-hard",
            with(
                "/process/rlimits",
                json!([rlimit("RLIMIT_NOFILE", 4096, 1024)]),
            ),
            "above the hard limit",
        ),
        case(
            "capability-unknown",
            with("/process/capabilities", json!({"bounding": ["CAP_FLY"]})),
            "unknown capability \"CAP_FLY\"",
        ),
        case(
            "capability-no-prefix",
            with("/process/capabilities", json!({"effective": ["chown"]})),
            "unknown capability \"chown\"",
        ),
        case(
            "capability-not-a-list",
            with("/process/capabilities", json!({"permitted": "CAP_CHOWN"})),
            "must be a list of strings",
        ),
        case(
            "uid-map-no-userns",
            with("/linux/uidMappings", json!([map(0, 1000, 1)])),
            "needs a user namespace",
        ),
        case(
            "gid-map-no-userns",
            with("/linux/gidMappings", json!([map(0, 1000, 1)])),
            "needs a user namespace",
        ),
        case(
            "oom-score-adj",
            with("/process/oomScoreAdj", json!(5000)),
            "outside -1000..=1000",
        ),
        case(
            "empty-root-path",
            with("/root/path", json!("")),
            "root.path must not be empty",
        ),
        case(
            "user-ns",
            with(
                "/linux/namespaces",
                json!([{"type": "user"}, {"type": "uts"}]),
            ),
            "a user namespace needs linux.uidMappings",
        ),
        case(
            "ns-path-of-another-type",
            with(
                "/linux/namespaces",
                json!([{"type": "mount"}, {"type": "uts"}, {"type": "cgroup", "path": "/proc/self/ns/ipc"}]),
            ),
            "the cgroup namespace's path /proc/self/ns/ipc names a namespace of type ipc",
        ),
        case(
            "ns-path-on-the-host",
            with(
                "/linux/namespaces",
                json!([{"type": "mount"}, {"type": "uts", "path": "/proc/self/ns/uts"}]),
            ),
            "cannot join the host's uts namespace /proc/self/ns/uts",
        ),
        case(
            "hooks-in-container",
            with("/hooks", json!({"startContainer": [{"path": "/bin/true"}]})),
            "startContainer hooks run in the container's namespaces",
        ),
        case(
            "hook-zero-timeout",
            with(
                "/hooks",
                json!({"prestart": [{"path": "/bin/true", "timeout": 0}]}),
            ),
            "timeout 0 must be greater than zero",
        ),
        case(
            "memory-too-small",
            with("/linux/resources", json!({"memory": {"limit": 1048576}})),
            "too small",
        ),
        case(
            "bad-vcpus-annotation",
            with("/annotations", json!({"io.sandbox-vm.vcpus": "many"})),
            "is not",
        ),
        case(
            "bind-source-missing",
            with(
                "/mounts",
                json!([{"destination": "/data", "type": "bind", "source": "/nonexistent/src", "options": ["rbind"]}]),
            ),
            "the source must be an existing file or directory",
        ),
        case(
            "no-mount-namespace",
            with(
                "/linux/namespaces",
                json!([{"type": "pid"}, {"type": "uts"}]),
            ),
            "no mount namespace",
        ),
        case(
            "version-2",
            with("/ociVersion", json!("2.0.0")),
            "unsupported ociVersion",
        ),
        case(
            "no-process",
            with("/process", Value::Null),
            "has no process",
        ),
        case("no-root", with("/root", Value::Null), "no root.path"),
    ];
    let mut dup = good();
    dup["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "pid"}, {"type": "uts"}]);
    cases.push(case("duplicate-namespace", dup, "more than once"));
    let mut userns = with(
        "/linux/uidMappings",
        json!([map(0, 1000, 10), map(5, 5000, 10)]),
    );
    userns["linux"]["namespaces"] = json!([{"type": "user"}, {"type": "uts"}, {"type": "mount"}]);
    cases.push(case("uid-map-overlap", userns.clone(), "ranges overlap"));
    userns["linux"]["uidMappings"] = json!([map(0, 1000, 0)]);
    cases.push(case("uid-map-empty", userns, "a mapping of size 0"));
    cases.extend([
        Case {
            name: "not-json",
            config: Config::Text("{\"ociVersion\": "),
            rootfs: true,
            want: "invalid",
        },
        Case {
            name: "no-config",
            config: Config::Missing,
            rootfs: true,
            want: "has no config.json",
        },
        Case {
            name: "no-rootfs",
            config: Config::Json(good()),
            rootfs: false,
            want: "rootfs",
        },
    ]);
    cases
}

fn write_bundle(dir: &Path, c: &Case) -> PathBuf {
    let b = dir.join("bundles").join(c.name);
    std::fs::create_dir_all(&b).unwrap();
    match &c.config {
        Config::Json(v) => std::fs::write(b.join("config.json"), v.to_string()).unwrap(),
        Config::Text(t) => std::fs::write(b.join("config.json"), t).unwrap(),
        Config::Missing => {}
    }
    if c.rootfs {
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
    }
    b
}

#[test]
fn every_malformed_bundle_fails_fast_with_one_line_and_leaves_nothing() {
    let dir = test_support::fresh_dir("svm-bad-bundles");
    let root = dir.join("state");
    let cases = corpus();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let bundle = write_bundle(&dir, c);
        let id = format!("bad-{}", c.name);
        let start = Instant::now();
        let out = Command::new(BIN)
            .arg("--root")
            .arg(&root)
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            // Artifacts that exist, so no case fails for the host's sake instead.
            .env("SANDBOX_VM_KERNEL", "/bin/sh")
            .env("SANDBOX_VM_AGENT_DISK", "/bin/sh")
            .output()
            .unwrap();
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines = stderr.trim_end().lines().count();
        let mut why = Vec::new();
        if out.status.success() {
            why.push("succeeded".to_string());
        }
        if took > Duration::from_secs(1) {
            why.push(format!("took {took:?}"));
        }
        if lines != 1 || !stderr.contains(c.want) {
            why.push(format!(
                "stderr {stderr:?} (want one line with {:?})",
                c.want
            ));
        }
        if root.join(&id).exists() {
            why.push("left its state directory".into());
        }
        let left = processes_mentioning(&root.to_string_lossy());
        // (not this test's own process, should its arguments name the root)
        if left.iter().any(|cmd| !cmd.contains("cli_bundles")) {
            why.push("left a process".into());
        }
        if !mounts_mentioning(&dir.to_string_lossy()).is_empty() {
            why.push("left a mount".into());
        }
        if !why.is_empty() {
            failures.push(format!("{}: {}", c.name, why.join("; ")));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
