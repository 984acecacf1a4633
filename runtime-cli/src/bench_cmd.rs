//! `sandbox-vm bench`: the benchmarks live in the `sandbox-vm-bench` crate (`bench/`); this
//! gives them what they would otherwise read from our process (the probe's variable,
//! `PATH`, our own executable as the sandbox-vm to compare, the temporary directory).

use std::path::PathBuf;

use sandbox_vm_bench::{BenchCmd, BenchError, Environment};

pub fn run(cmd: BenchCmd) -> Result<(), BenchError> {
    match cmd {
        BenchCmd::Isolation(mut a) => {
            a.env = Environment {
                probe: std::env::var_os("SANDBOX_VM_PROBE").map(PathBuf::from),
                path: std::env::var_os("PATH"),
                sandbox_vm: std::env::current_exe().ok(),
                temp_dir: std::env::temp_dir(),
            };
            sandbox_vm_bench::isolation(a)
        }
    }
}
