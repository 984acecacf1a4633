//! The compiler checked by running its programs in a small classic-BPF interpreter over
//! made-up `seccomp_data`, for every action, operator and architecture case.

use super::*;
use agent_protocol::oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSyscallBuilder};

/// Runs `prog` on (arch, nr, args) the way the kernel does; returns the filter's verdict.
fn run(f: &Filter, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let i = f.insns[pc];
        pc += 1;
        match i.code {
            BPF_LD_W_ABS => {
                let o = i.k as usize;
                acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
            }
            BPF_ALU_AND_K => acc &= i.k,
            BPF_JMP_JA => pc += i.k as usize,
            BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K => {
                let t = match i.code {
                    BPF_JEQ_K => acc == i.k,
                    BPF_JGT_K => acc > i.k,
                    _ => acc >= i.k,
                };
                pc += if t { i.jt } else { i.jf } as usize;
            }
            BPF_RET_K => return i.k,
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

fn x86_64(f: &Filter, name: &str, args: [u64; 6]) -> u32 {
    run(
        f,
        AUDIT_ARCH_X86_64,
        syscalls::number(name).unwrap() as u32,
        args,
    )
}

fn rule(names: &[&str], act: LinuxSeccompAction) -> LinuxSyscallBuilder {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(act)
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, two: u64) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value)
        .value_two(two)
        .build()
        .unwrap()
}

fn profile(default: LinuxSeccompAction, rules: Vec<LinuxSyscall>) -> LinuxSeccomp {
    let mut s = LinuxSeccomp::default();
    s.set_default_action(default);
    s.set_architectures(Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86]));
    s.set_syscalls(Some(rules));
    s
}

use agent_protocol::oci_spec::runtime::LinuxSyscall;
use LinuxSeccompAction::*;
use LinuxSeccompOperator::*;

#[test]
fn actions_and_default() {
    let p = profile(
        ScmpActErrno,
        vec![
            rule(&["read", "write", "not_a_call", "chown32"], ScmpActAllow)
                .build()
                .unwrap(),
            rule(&["mkdir"], ScmpActErrno)
                .errno_ret(13u32)
                .build()
                .unwrap(),
            rule(&["rmdir"], ScmpActErrno).build().unwrap(),
            rule(&["kill"], ScmpActKill).build().unwrap(),
            rule(&["tkill"], ScmpActKillProcess).build().unwrap(),
            rule(&["getpid"], ScmpActTrap).build().unwrap(),
            rule(&["getppid"], ScmpActLog).build().unwrap(),
            rule(&["getuid"], ScmpActTrace)
                .errno_ret(7u32)
                .build()
                .unwrap(),
        ],
    );
    let mut p = p;
    p.set_default_errno_ret(Some(38));
    let f = compile(&p).unwrap();
    let z = [0; 6];
    assert_eq!(x86_64(&f, "read", z), RET_ALLOW);
    assert_eq!(x86_64(&f, "write", z), RET_ALLOW);
    assert_eq!(x86_64(&f, "mkdir", z), RET_ERRNO | 13);
    assert_eq!(x86_64(&f, "rmdir", z), RET_ERRNO | libc::EPERM as u32);
    assert_eq!(x86_64(&f, "kill", z), RET_KILL_THREAD);
    assert_eq!(x86_64(&f, "tkill", z), RET_KILL_PROCESS);
    assert_eq!(x86_64(&f, "getpid", z), RET_TRAP);
    assert_eq!(x86_64(&f, "getppid", z), RET_LOG);
    assert_eq!(x86_64(&f, "getuid", z), RET_TRACE | 7);
    assert_eq!(
        x86_64(&f, "open", z),
        RET_ERRNO | 38,
        "default with defaultErrnoRet"
    );
    // Foreign ABIs: listed i386 gets ENOSYS, x32 (not listed) and others are killed.
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    assert_eq!(run(&f, AUDIT_ARCH_I386, 3, z), enosys);
    assert_eq!(
        run(&f, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1, z),
        RET_KILL_PROCESS
    );
    assert_eq!(run(&f, 0xc000_00b7, 63, z), RET_KILL_PROCESS);
}

#[test]
fn every_operator_on_64_bit_arguments() {
    let big = 0x1_0000_0005u64;
    let cases: [(LinuxSeccompOperator, &[(u64, bool)]); 6] = [
        (ScmpCmpEq, &[(big, true), (5, false), (big + 1, false)]),
        (ScmpCmpNe, &[(big, false), (5, true), (big | 1 << 40, true)]),
        (
            ScmpCmpGt,
            &[(big + 1, true), (big, false), (5, false), (1 << 40, true)],
        ),
        (
            ScmpCmpGe,
            &[(big, true), (big - 1, false), (0x2_0000_0000, true)],
        ),
        (
            ScmpCmpLt,
            &[(big - 1, true), (big, false), (6, true), (1 << 33, false)],
        ),
        (
            ScmpCmpLe,
            &[(big, true), (big + 1, false), (0xffff_ffff, true)],
        ),
    ];
    for (op, expect) in cases {
        let p = profile(
            ScmpActAllow,
            vec![rule(&["socket"], ScmpActErrno)
                .args(vec![arg(2, op, big, 0)])
                .build()
                .unwrap()],
        );
        let f = compile(&p).unwrap();
        for &(v, hit) in expect {
            let got = x86_64(&f, "socket", [0, 0, v, 0, 0, 0]);
            let want = if hit { RET_ERRNO | 1 } else { RET_ALLOW };
            assert_eq!(got, want, "{op:?} {v:#x}");
        }
    }
}

#[test]
fn masked_eq_and_rule_order() {
    // podman's clone rule: allowed when no namespace flag is set; otherwise the next rule
    // (EPERM for a specific flag) and then the call's unconditional rule decide.
    let ns_flags = 0x7e02_0000u64;
    let p = profile(
        ScmpActErrno,
        vec![
            rule(&["clone"], ScmpActAllow)
                .args(vec![arg(0, ScmpCmpMaskedEq, ns_flags, 0)])
                .build()
                .unwrap(),
            rule(&["clone"], ScmpActKillProcess).build().unwrap(),
            rule(&["clone"], ScmpActErrno)
                .errno_ret(1u32)
                .args(vec![
                    arg(0, ScmpCmpMaskedEq, 0x1000_0000, 0x1000_0000),
                    arg(1, ScmpCmpEq, 0, 0),
                ])
                .build()
                .unwrap(),
        ],
    );
    let f = compile(&p).unwrap();
    assert_eq!(x86_64(&f, "clone", [0x11, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(
        x86_64(&f, "clone", [0x1000_0000, 0, 0, 0, 0, 0]),
        RET_ERRNO | 1
    );
    // Both conditions must hold for the second conditional rule.
    assert_eq!(
        x86_64(&f, "clone", [0x1000_0000, 9, 0, 0, 0, 0]),
        RET_KILL_PROCESS
    );
    assert_eq!(
        x86_64(&f, "clone", [1 << 32 | 0x11, 0, 0, 0, 0, 0]),
        RET_ALLOW
    );
}

#[test]
fn many_calls_stay_within_jump_range() {
    let names: Vec<&str> = syscalls::X86_64.iter().map(|(n, _)| *n).collect();
    let p = profile(
        ScmpActErrno,
        vec![rule(&names, ScmpActAllow).build().unwrap()],
    );
    let f = compile(&p).unwrap();
    assert!(
        f.insns.len() < names.len() + 40,
        "{} instructions",
        f.insns.len()
    );
    for (n, _) in syscalls::X86_64 {
        assert_eq!(x86_64(&f, n, [0; 6]), RET_ALLOW, "{n}");
    }
}

#[test]
fn unsupported_parts_are_refused_clearly() {
    let notify = profile(
        ScmpActAllow,
        vec![rule(&["read"], ScmpActNotify).build().unwrap()],
    );
    let e = compile(&notify).unwrap_err().to_string();
    assert!(
        e.contains("SCMP_ACT_NOTIFY") && e.contains("not supported"),
        "{e}"
    );
    let idx = profile(
        ScmpActAllow,
        vec![rule(&["read"], ScmpActErrno)
            .args(vec![arg(6, ScmpCmpEq, 0, 0)])
            .build()
            .unwrap()],
    );
    assert!(matches!(compile(&idx), Err(SeccompError::BadArgIndex(n, 6)) if n == "read"));
    let errno = profile(
        ScmpActAllow,
        vec![rule(&["read"], ScmpActErrno)
            .errno_ret(70000u32)
            .build()
            .unwrap()],
    );
    assert!(matches!(
        compile(&errno),
        Err(SeccompError::BadErrno(70000))
    ));
    let mut listener = profile(ScmpActAllow, vec![]);
    listener.set_listener_path(Some("/run/l.sock".into()));
    assert!(matches!(compile(&listener), Err(SeccompError::Listener(_))));
}

#[test]
fn podmans_default_profile_compiles() {
    let s: LinuxSeccomp =
        serde_json::from_str(include_str!("../tests/fixtures/podman-seccomp.json")).unwrap();
    let f = compile(&s).unwrap();
    let z = [0; 6];
    for ok in ["read", "execve", "mkdir", "clone3", "openat", "exit_group"] {
        assert_ne!(x86_64(&f, ok, z) & 0xffff_0000, RET_KILL_THREAD, "{ok}");
    }
    assert_eq!(x86_64(&f, "openat", z), RET_ALLOW);
    assert_eq!(x86_64(&f, "kexec_load", z) & 0xffff_0000, RET_ERRNO);
}

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize]
    }
}

/// The OCI/libseccomp semantics, written plainly: the reference the BPF must agree with.
fn reference(p: &LinuxSeccomp, name: &str, args: [u64; 6]) -> u32 {
    let holds = |c: &LinuxSeccompArg| {
        let (a, v) = (args[c.index()], c.value());
        match c.op() {
            ScmpCmpEq => a == v,
            ScmpCmpNe => a != v,
            ScmpCmpLt => a < v,
            ScmpCmpLe => a <= v,
            ScmpCmpGt => a > v,
            ScmpCmpGe => a >= v,
            ScmpCmpMaskedEq => a & v == c.value_two().unwrap_or(0),
        }
    };
    let rules: Vec<&LinuxSyscall> = p
        .syscalls()
        .iter()
        .flatten()
        .filter(|r| r.names().iter().any(|n| n == name))
        .collect();
    let conditional = rules
        .iter()
        .filter(|r| r.args().as_ref().is_some_and(|a| !a.is_empty()));
    for r in conditional {
        if r.args().as_ref().unwrap().iter().all(holds) {
            return action(r.action(), r.errno_ret()).unwrap();
        }
    }
    match rules
        .iter()
        .find(|r| r.args().as_ref().is_none_or(|a| a.is_empty()))
    {
        Some(r) => action(r.action(), r.errno_ret()).unwrap(),
        None => action(p.default_action(), p.default_errno_ret()).unwrap(),
    }
}

#[test]
fn random_profiles_agree_with_the_reference_semantics() {
    let names = ["read", "write", "openat", "mkdir", "clone", "socket"];
    let values = [
        0u64,
        1,
        5,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0005,
        u64::MAX,
    ];
    let ops = [
        ScmpCmpEq,
        ScmpCmpNe,
        ScmpCmpLt,
        ScmpCmpLe,
        ScmpCmpGt,
        ScmpCmpGe,
        ScmpCmpMaskedEq,
    ];
    let acts = [
        ScmpActAllow,
        ScmpActErrno,
        ScmpActKillProcess,
        ScmpActTrap,
        ScmpActLog,
    ];
    let mut rng = Rng(0x0dd_5eed_c0ff_ee01);
    for _ in 0..300 {
        let mut rules = vec![];
        for _ in 0..1 + rng.next() % 6 {
            let n: Vec<String> = (0..1 + rng.next() % 2)
                .map(|_| rng.pick(&names).to_string())
                .collect();
            let conds: Vec<LinuxSeccompArg> = (0..rng.next() % 4)
                .map(|_| {
                    let (op, v, v2) = (rng.pick(&ops), rng.pick(&values), rng.pick(&values));
                    arg((rng.next() % 6) as usize, op, v, v2)
                })
                .collect();
            let mut r = rule(&[], rng.pick(&acts))
                .names(n)
                .errno_ret((rng.next() % 40) as u32);
            if !conds.is_empty() {
                r = r.args(conds);
            }
            rules.push(r.build().unwrap());
        }
        let p = profile(rng.pick(&acts), rules);
        let f = compile(&p).unwrap();
        for _ in 0..40 {
            let name = rng.pick(&names);
            let args = [(); 6].map(|_| rng.pick(&values));
            assert_eq!(
                x86_64(&f, name, args),
                reference(&p, name, args),
                "{name} {args:x?} under {p:?}"
            );
        }
    }
}
