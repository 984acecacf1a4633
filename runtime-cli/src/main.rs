//! `sandbox-vm`: runs containers in microVMs. For now: `boot`, the developer command that
//! boots a guest kernel with the VMM.

mod boot_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sandbox-vm",
    version,
    about = "Run containers, each in its own KVM microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest kernel in a microVM (developer command); exits 0 when the guest reboots
    /// or powers off, 2 when it crashes, 1 on a VMM error.
    Boot(boot_cmd::BootArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Boot(args) => boot_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandbox-vm: {e:#}");
            ExitCode::from(1)
        }
    }
}
