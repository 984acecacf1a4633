//! OCI `linux.seccomp` → a classic BPF seccomp filter, compiled in the agent and installed
//! by the child just before `execve` (see `child`).
//!
//! Semantics (those of libseccomp, which runc uses): for a system call, its rules with
//! argument conditions are tried in spec order and the first whose conditions all hold
//! decides; else its first rule without conditions; else `defaultAction`. Names this
//! architecture does not have are skipped, as runc does. Only x86_64 calls get the rules;
//! the guest kernel has neither IA32 nor x32 emulation, so a call through another ABI gets
//! ENOSYS when the profile lists that architecture and kills the process when it does not
//! (libseccomp's default for foreign architectures).
//!
//! Why not the `seccompiler` crate: it gives all rules of a filter one action, while OCI
//! profiles mix actions (podman's allows most calls, answers some with EPERM and the rest
//! with ENOSYS). The compiler below is small and tested against a BPF interpreter.

use std::collections::BTreeMap;
use std::io;

use agent_protocol::oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

use crate::syscalls;

/// Why a profile cannot be compiled or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An action the guest cannot provide.
    #[error("seccomp action {0} is not supported in the guest (no notification listener)")]
    UnsupportedAction(LinuxSeccompAction),
    /// A filter flag the guest cannot provide.
    #[error("seccomp flag {0} is not supported in the guest")]
    UnsupportedFlag(LinuxSeccompFilterFlag),
    /// `listenerPath` is set.
    #[error("seccomp listenerPath {0:?} is not supported in the guest (no notification listener)")]
    Listener(String),
    /// errnoRet beyond what an errno can be.
    #[error("seccomp errnoRet {0} is out of range (at most 4095)")]
    BadErrno(u32),
    /// An argument index beyond the six a system call has.
    #[error("seccomp rule for {0}: argument index {1} is out of range (0-5)")]
    BadArgIndex(String, usize),
    /// The program exceeds the kernel's limit.
    #[error("seccomp filter of {0} instructions exceeds the kernel's limit of {MAX_INSNS}")]
    TooLong(usize),
    /// A conditional jump that does not fit classic BPF's 8-bit offset.
    #[error("seccomp profile too complex: a conditional jump of {0} instructions")]
    JumpTooFar(usize),
    /// seccomp(2) failed.
    #[error("cannot install the seccomp filter: {0}")]
    Install(io::Error),
}

/// The kernel's limit on a filter's length (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
// BPF_LD | BPF_W | BPF_ABS (the first two are 0).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JGT_K: u16 = 0x05 | 0x20;
const BPF_JGE_K: u16 = 0x05 | 0x30;
const BPF_RET_K: u16 = 0x06;

// struct seccomp_data offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const SockFilter,
}

/// A compiled filter, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    insns: Vec<SockFilter>,
    flags: u32,
}

impl Filter {
    /// Installs the filter on the calling thread. Needs NO_NEW_PRIVS or CAP_SYS_ADMIN.
    pub fn install(&self) -> Result<(), SeccompError> {
        let prog = SockFprog {
            // `compile` keeps the length at most MAX_INSNS.
            len: self.insns.len() as libc::c_ushort,
            filter: self.insns.as_ptr(),
        };
        // SAFETY: `prog` points at `self.insns`, which outlives the call; the kernel copies
        // the program and reads nothing else.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                self.flags as libc::c_ulong,
                &prog as *const SockFprog,
            )
        };
        if r < 0 {
            return Err(SeccompError::Install(io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn errno_of(e: Option<u32>) -> Result<u32, SeccompError> {
    match e {
        None => Ok(libc::EPERM as u32),
        Some(n) if n <= 4095 => Ok(n),
        Some(n) => Err(SeccompError::BadErrno(n)),
    }
}

/// The filter return value for an OCI action (errnoRet defaults to EPERM, as in runc).
fn action(a: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<u32, SeccompError> {
    use LinuxSeccompAction::*;
    Ok(match a {
        ScmpActKill | ScmpActKillThread => RET_KILL_THREAD,
        ScmpActKillProcess => RET_KILL_PROCESS,
        ScmpActTrap => RET_TRAP,
        ScmpActErrno => RET_ERRNO | errno_of(errno_ret)?,
        ScmpActTrace => RET_TRACE | errno_of(errno_ret)?,
        ScmpActLog => RET_LOG,
        ScmpActAllow => RET_ALLOW,
        ScmpActNotify => return Err(SeccompError::UnsupportedAction(a)),
    })
}

/// A jump target while assembling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    Next,
    Label(usize),
}

/// An instruction while assembling: targets are labels, resolved by [`Asm::finish`]. For
/// `ja`, the target is `jt`.
struct Ins {
    code: u16,
    jt: To,
    jf: To,
    k: u32,
}

/// A tiny assembler: instructions with symbolic forward jumps.
#[derive(Default)]
struct Asm {
    code: Vec<Ins>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.jump(code, k, To::Next, To::Next);
    }
    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.code.push(Ins { code, jt, jf, k });
    }
    fn ja(&mut self, l: usize) {
        self.jump(BPF_JMP_JA, 0, To::Label(l), To::Next);
    }
    fn ret(&mut self, k: u32) {
        self.stmt(BPF_RET_K, k);
    }

    /// Offset from the instruction after `at` to `to` (forward only).
    fn offset(&self, to: To, at: usize) -> usize {
        match to {
            To::Next => 0,
            To::Label(l) => {
                let target = self.labels[l].expect("every label is bound");
                assert!(target > at, "the compiler emits forward jumps only");
                target - at - 1
            }
        }
    }

    fn finish(self) -> Result<Vec<SockFilter>, SeccompError> {
        let mut out = Vec::with_capacity(self.code.len());
        for (at, ins) in self.code.iter().enumerate() {
            let (jt, jf) = (self.offset(ins.jt, at), self.offset(ins.jf, at));
            let insn = if ins.code == BPF_JMP_JA {
                SockFilter {
                    code: ins.code,
                    jt: 0,
                    jf: 0,
                    k: jt as u32,
                }
            } else {
                let short =
                    |off: usize| u8::try_from(off).map_err(|_| SeccompError::JumpTooFar(off));
                SockFilter {
                    code: ins.code,
                    jt: short(jt)?,
                    jf: short(jf)?,
                    k: ins.k,
                }
            };
            out.push(insn);
        }
        if out.len() > MAX_INSNS {
            return Err(SeccompError::TooLong(out.len()));
        }
        Ok(out)
    }
}

/// One rule of one system call.
struct Rule {
    ret: u32,
    args: Vec<LinuxSeccompArg>,
}

/// Emits the test of one argument condition: falls through when it holds, jumps to `fail`
/// when not. Arguments are 64-bit: compared as high word, then low word.
fn emit_cond(a: &mut Asm, c: &LinuxSeccompArg, fail: usize) {
    let off = OFF_ARGS + 8 * c.index() as u32;
    let (lo_off, hi_off) = (off, off + 4);
    let fail = To::Label(fail);
    let pass = a.label();
    let (v, hi, lo) = (c.value(), |x: u64| (x >> 32) as u32, |x: u64| x as u32);
    use LinuxSeccompOperator::*;
    match c.op() {
        ScmpCmpEq => {
            a.stmt(BPF_LD_W_ABS, hi_off);
            a.jump(BPF_JEQ_K, hi(v), To::Next, fail);
            a.stmt(BPF_LD_W_ABS, lo_off);
            a.jump(BPF_JEQ_K, lo(v), To::Next, fail);
        }
        ScmpCmpNe => {
            a.stmt(BPF_LD_W_ABS, hi_off);
            a.jump(BPF_JEQ_K, hi(v), To::Next, To::Label(pass));
            a.stmt(BPF_LD_W_ABS, lo_off);
            a.jump(BPF_JEQ_K, lo(v), fail, To::Next);
        }
        ScmpCmpGt | ScmpCmpGe => {
            // hi > vhi: holds; hi < vhi: fails; equal: decided by the low word.
            let last = if c.op() == ScmpCmpGt {
                BPF_JGT_K
            } else {
                BPF_JGE_K
            };
            a.stmt(BPF_LD_W_ABS, hi_off);
            a.jump(BPF_JGT_K, hi(v), To::Label(pass), To::Next);
            a.jump(BPF_JEQ_K, hi(v), To::Next, fail);
            a.stmt(BPF_LD_W_ABS, lo_off);
            a.jump(last, lo(v), To::Next, fail);
        }
        ScmpCmpLt | ScmpCmpLe => {
            // The negations of GE and GT.
            let last = if c.op() == ScmpCmpLt {
                BPF_JGE_K
            } else {
                BPF_JGT_K
            };
            a.stmt(BPF_LD_W_ABS, hi_off);
            a.jump(BPF_JGT_K, hi(v), fail, To::Next);
            a.jump(BPF_JEQ_K, hi(v), To::Next, To::Label(pass));
            a.stmt(BPF_LD_W_ABS, lo_off);
            a.jump(last, lo(v), fail, To::Next);
        }
        ScmpCmpMaskedEq => {
            // OCI: `value` is the mask, `valueTwo` the expected masked value.
            let want = c.value_two().unwrap_or(0);
            for (off, m, w) in [(hi_off, hi(v), hi(want)), (lo_off, lo(v), lo(want))] {
                a.stmt(BPF_LD_W_ABS, off);
                a.stmt(BPF_ALU_AND_K, m);
                a.jump(BPF_JEQ_K, w, To::Next, fail);
            }
        }
    }
    a.bind(pass);
}

/// The rules of each known x86_64 system call, in spec order.
fn collect_rules(s: &LinuxSeccomp) -> Result<BTreeMap<u32, Vec<Rule>>, SeccompError> {
    let mut by_nr: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for sc in s.syscalls().as_deref().unwrap_or(&[]) {
        let ret = action(sc.action(), sc.errno_ret())?;
        let args = sc.args().clone().unwrap_or_default();
        for name in sc.names() {
            if let Some(bad) = args.iter().find(|c| c.index() > 5) {
                return Err(SeccompError::BadArgIndex(name.clone(), bad.index()));
            }
            // Unknown here (another architecture's call, or newer than this table): skipped.
            let Some(nr) = syscalls::number(name) else {
                continue;
            };
            by_nr.entry(nr as u32).or_default().push(Rule {
                ret,
                args: args.clone(),
            });
        }
    }
    Ok(by_nr)
}

fn filter_flags(s: &LinuxSeccomp) -> Result<u32, SeccompError> {
    let mut flags = 0;
    for f in s.flags().as_deref().unwrap_or(&[]) {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            other => return Err(SeccompError::UnsupportedFlag(*other)),
        };
    }
    Ok(flags)
}

/// Compiles an OCI seccomp profile.
pub fn compile(s: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    if let Some(p) = s.listener_path() {
        return Err(SeccompError::Listener(p.display().to_string()));
    }
    let default = action(s.default_action(), s.default_errno_ret())?;
    let flags = filter_flags(s)?;
    let arches = s.architectures().clone().unwrap_or_default();
    let foreign = |arch: Arch| {
        if arches.contains(&arch) {
            RET_ERRNO | libc::ENOSYS as u32
        } else {
            RET_KILL_PROCESS
        }
    };
    let rules = collect_rules(s)?;

    let mut a = Asm::default();
    let (not_x86_64, x32) = (a.label(), a.label());
    // The foreign-ABI returns sit after the dispatch, beyond an 8-bit jump: reach them
    // through `ja`.
    let (x86_64, native) = (a.label(), a.label());
    a.stmt(BPF_LD_W_ABS, OFF_ARCH);
    a.jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, To::Label(x86_64), To::Next);
    a.ja(not_x86_64);
    a.bind(x86_64);
    a.stmt(BPF_LD_W_ABS, OFF_NR);
    a.jump(BPF_JGE_K, X32_SYSCALL_BIT, To::Next, To::Label(native));
    a.ja(x32);
    a.bind(native);
    let blocks = emit_dispatch(&mut a, &rules, default);
    a.ret(default);
    for (block, nr) in blocks {
        emit_block(&mut a, block, &rules[&nr], default);
    }
    a.bind(x32);
    a.ret(foreign(Arch::ScmpArchX32));
    a.bind(not_x86_64);
    let not_i386 = a.label();
    a.jump(BPF_JEQ_K, AUDIT_ARCH_I386, To::Next, To::Label(not_i386));
    a.ret(foreign(Arch::ScmpArchX86));
    a.bind(not_i386);
    a.ret(RET_KILL_PROCESS);
    Ok(Filter {
        insns: a.finish()?,
        flags,
    })
}

/// The system-call number tests. Calls decided by one unconditional action share a return
/// per run of at most 200 (conditional offsets are 8-bit); calls with argument rules jump
/// to a block of their own. Returns the blocks to emit, by label.
fn emit_dispatch(a: &mut Asm, rules: &BTreeMap<u32, Vec<Rule>>, default: u32) -> Vec<(usize, u32)> {
    let mut simple: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut blocks = vec![];
    for (&nr, rs) in rules {
        if rs.iter().any(|r| !r.args.is_empty()) {
            let (block, skip) = (a.label(), a.label());
            a.jump(BPF_JEQ_K, nr, To::Next, To::Label(skip));
            a.ja(block);
            a.bind(skip);
            blocks.push((block, nr));
        } else if rs[0].ret != default {
            simple.entry(rs[0].ret).or_default().push(nr);
        }
    }
    for (ret, nrs) in simple {
        for run in nrs.chunks(200) {
            let (hit, end) = (a.label(), a.label());
            for &nr in run {
                a.jump(BPF_JEQ_K, nr, To::Label(hit), To::Next);
            }
            a.ja(end);
            a.bind(hit);
            a.ret(ret);
            a.bind(end);
        }
    }
    blocks
}

/// One call's block: its conditional rules in order, then its first unconditional rule,
/// else the default.
fn emit_block(a: &mut Asm, block: usize, rules: &[Rule], default: u32) {
    a.bind(block);
    for r in rules.iter().filter(|r| !r.args.is_empty()) {
        let next = a.label();
        for c in &r.args {
            emit_cond(a, c, next);
        }
        a.ret(r.ret);
        a.bind(next);
    }
    let fallback = rules.iter().find(|r| r.args.is_empty());
    a.ret(fallback.map_or(default, |r| r.ret));
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
