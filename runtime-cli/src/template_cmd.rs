//! `sandbox-vm template [--bundle DIR]`: boots the VM the bundle's container would get to
//! agent-ready once, has the agent prepare the bundle's container init ahead (its
//! namespaces and kernel filesystems), and saves it as a template (`sandbox::template`),
//! so later `create`s of matching containers restore it instead of booting. Prints the
//! template directory; an existing template for the same key is reused. With `--network`
//! the template has one NIC, for sandboxes on a pod network with one interface (a bundle
//! naming a netns gets one anyway).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use sandbox::oci::bundle;
use sandbox::{HostConfig, PodPlan, RealHost, Role, Sandbox};

#[derive(Args)]
pub struct TemplateArgs {
    /// The bundle whose VM (kernel, guest image, shape, annotations) the template is for
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
    /// Give the template one NIC, for pods on a network with one interface in their netns
    /// (CNI, netavark); it boots in a network namespace of its own, gone after the build
    #[arg(long)]
    network: bool,
}

/// Builds (or finds) the template; prints its directory.
pub fn run(args: TemplateArgs, host: &HostConfig) -> Result<ExitCode> {
    let bundle = bundle::load(&args.bundle)?;
    let work = host.templates.join(format!("build-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    // Planned as `create` plans the bundle's container, alone in its VM: the template's
    // agent prepares that container's init.
    let id = format!("template-{}", std::process::id());
    let planned = PodPlan::new(
        &id,
        &bundle.spec,
        &bundle.rootfs,
        Role::Alone,
        &work,
        host,
        &RealHost,
    );
    let t0 = Instant::now();
    let built = planned.map_err(anyhow::Error::from).and_then(|plan| {
        let nic = args.network || plan.netns.is_some();
        Ok(Sandbox::build_template_nic(&plan, nic)?)
    });
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
