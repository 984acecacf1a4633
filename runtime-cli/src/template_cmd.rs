//! `sandbox-vm template [--bundle DIR]`: boots the VM the bundle's container would get to
//! agent-ready once, has the agent prepare the bundle's container init ahead (its
//! namespaces and kernel filesystems), and saves it as a template (`sandbox::template`),
//! so later `create`s of matching containers restore it instead of booting. Prints the
//! template directory; an existing template for the same key is reused.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sandbox::oci::{bundle, translate};
use sandbox::template::{self, TemplateUse};
use sandbox::{Sandbox, SandboxConfig, SandboxPaths};

/// How long the template's guest may take to boot to its agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Args)]
pub struct TemplateArgs {
    /// The bundle whose VM (kernel, guest image, shape, annotations) the template is for
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
}

/// Builds (or finds) the template; prints its directory.
pub fn run(args: TemplateArgs) -> Result<ExitCode> {
    let bundle = bundle::load(&args.bundle)?;
    let root = template::templates_root();
    let work = root.join(format!("build-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let paths = SandboxPaths::in_dir(&work);
    let defaults = sandbox::oci::host_defaults();
    let (vm, mode) = translate::vm_config(&bundle.spec, &defaults, &paths.vm_paths())?;
    // The guest spec `create` would send for this bundle: its container's init is
    // prepared in the template.
    let mut plan = translate::container_request(
        "template",
        &bundle.spec,
        &bundle.rootfs,
        mode,
        &translate::probe_host,
    )?;
    // As `create` does (lifecycle::make_plan): the container has the VM to itself. (A pod
    // netns, given by path, is not in the guest spec at all.)
    translate::alone_in_vm_without_nic(&mut plan);
    let cfg = SandboxConfig {
        id: format!("template-{}", std::process::id()),
        dir: work.clone(),
        vm,
        vmm_exe: sandbox::vmm_process::find_vmm().context("cannot find the VMM binary")?,
        virtiofsd: sandbox::virtiofsd::find()
            .context("virtiofsd not found (set SANDBOX_VM_VIRTIOFSD)")?,
        hostname: None,
        netns: None,
        agent_timeout: AGENT_TIMEOUT,
        template: TemplateUse::Off,
    };
    let t0 = Instant::now();
    let built = Sandbox::build_template(&cfg, &root, Some(&plan.request.spec));
    let _ = std::fs::remove_dir_all(&work);
    let dir = built?;
    eprintln!(
        "sandbox-vm template: {} ready after {:.1} s",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    println!("{}", dir.display());
    Ok(ExitCode::SUCCESS)
}
