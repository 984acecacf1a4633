//! The pod as a Sandbox API sandbox (containerd 2.x, `sandboxer = "shim"`): the VM is
//! planned at CreateSandbox from the pod's CRI config, boots at StartSandbox with no
//! container in it (no pause container), takes the pod's containers through the Task
//! API, and stops at StopSandbox (or ShutdownSandbox), whatever containers are left.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use sandbox::{ContainerStats, PodPlan, RealHost, Role, Sandbox, SandboxOps};
use tokio::sync::watch;

use super::{blocking, state_dir, stop_vm, write_record, BundleRecord, Pod, PodState, PodVm};
use super::{BUNDLE_RECORD, LOST_STATUS};
use crate::container::Exit;
use crate::error::ShimError;
use crate::pod_config::{vm_spec, PodConfig};
use crate::pod_files::PodFiles;
use crate::sandbox_life::{Phase, SandboxLife};

/// The sandbox: its life, its VM's plan, its bundle and the files its containers get.
pub struct ApiSandbox {
    life: SandboxLife,
    plan: Arc<PodPlan>,
    bundle: PathBuf,
    files: PodFiles,
}

/// What CreateSandbox gets.
pub struct CreateSandboxArgs {
    pub id: String,
    pub bundle: PathBuf,
    /// The `Any` of the pod's config: its type URL and bytes (`None`: no options).
    pub options: Option<(String, Vec<u8>)>,
    pub netns: String,
}

/// What SandboxStatus reports.
pub struct SandboxState {
    pub state: &'static str,
    pub created_at: SystemTime,
    pub exited: Option<Exit>,
}

fn api_mut<'a>(st: &'a mut PodState, id: &str) -> Result<&'a mut ApiSandbox, ShimError> {
    let a = st
        .api
        .as_mut()
        .ok_or_else(|| ShimError::NotFound(format!("sandbox {id}")))?;
    a.life.check_id(id)?;
    Ok(a)
}

impl Pod {
    /// Whether a Sandbox API sandbox holds the shim (a Task Shutdown must not end it).
    pub fn has_api_sandbox(&self) -> bool {
        self.lock().api.is_some()
    }

    /// The pod files a Sandbox API sandbox's containers get (`crate::pod_files`).
    pub fn api_files(&self) -> Option<PodFiles> {
        self.lock().api.as_ref().map(|a| a.files.clone())
    }

    fn api_vm(&self) -> Option<PodVm> {
        self.lock().vm.clone().filter(|v| v.api)
    }

    /// CreateSandbox: plans the VM (every problem with the pod or the host is found here);
    /// nothing runs yet.
    pub async fn create_sandbox(&self, args: CreateSandboxArgs) -> Result<(), ShimError> {
        let taken = |st: &PodState| match (&st.api, &st.vm) {
            (Some(a), _) => Some(ShimError::Exists(format!("sandbox {}", a.life.id()))),
            (None, Some(vm)) => Some(ShimError::SecondOwner(vm.owner.clone())),
            (None, None) => None,
        };
        if let Some(e) = taken(&self.lock()) {
            return Err(e);
        }
        let pod = match &args.options {
            Some((url, bytes)) => PodConfig::from_any(url, bytes)?,
            None => PodConfig::default(),
        };
        let spec = vm_spec(&args.id, &pod, &args.netns)?;
        let dir = state_dir(&self.state_root, &self.namespace, &args.id);
        let (id, rootfs, host) = (
            args.id.clone(),
            args.bundle.join("rootfs"),
            self.host.clone(),
        );
        let plan = blocking(move || {
            Ok(PodPlan::new(
                &id,
                &spec,
                &rootfs,
                Role::Pod,
                &dir,
                &host,
                &RealHost,
            )?)
        })
        .await?;
        let files = PodFiles::write(&args.bundle, &pod)?;
        let mut st = self.lock();
        if let Some(e) = taken(&st) {
            return Err(e);
        }
        st.api = Some(ApiSandbox {
            life: SandboxLife::new(&args.id),
            plan: Arc::new(plan),
            bundle: args.bundle,
            files,
        });
        Ok(())
    }

    /// StartSandbox: boots the VM (restoring a template when one matches). Returns when
    /// the sandbox was created.
    pub async fn start_sandbox(&self, id: &str) -> Result<SystemTime, ShimError> {
        let (plan, bundle) = {
            let mut st = self.lock();
            let a = api_mut(&mut st, id)?;
            a.life.begin_start()?;
            (a.plan.clone(), a.bundle.clone())
        };
        // Recorded before the boot: a shim that dies booting leaves a VM too.
        let rec = BundleRecord {
            state_dir: plan.dir.clone(),
            owner: true,
            rootfs_mounted: false,
        };
        write_record(&bundle, &rec);
        let p = plan.clone();
        let booted = blocking(move || {
            std::fs::create_dir_all(&p.dir).map_err(|err| ShimError::StateDir {
                path: p.dir.clone(),
                err,
            })?;
            let sb = Sandbox::create(&p)?;
            log::info!("sandbox {} VM is up (pids {:?})", p.id, sb.host_pids());
            Ok(sb)
        })
        .await;
        let mut st = self.lock();
        let a = api_mut(&mut st, id)?;
        let sb = match booted {
            Ok(sb) => Arc::new(sb),
            Err(e) => {
                a.life.end_start(false);
                let _ = std::fs::remove_dir_all(&plan.dir);
                return Err(e);
            }
        };
        if a.life.phase() != Phase::Starting {
            // Stopped while it booted.
            let vm = PodVm {
                owner: id.into(),
                api: true,
                plan,
                sandbox: sb,
            };
            tokio::task::spawn_blocking(move || stop_vm(&vm));
            return Err(ShimError::State(format!(
                "sandbox {id} was stopped as it started"
            )));
        }
        a.life.end_start(true);
        let created_at = a.life.created_at();
        st.vm = Some(PodVm {
            owner: id.into(),
            api: true,
            plan,
            sandbox: sb,
        });
        Ok(created_at)
    }

    /// Stops the VM, if it runs, with every process it held reported exited, and records
    /// the sandbox's exit (`status`, unless it had one).
    async fn end_vm(&self, id: &str, status: u32) -> Result<(), ShimError> {
        api_mut(&mut self.lock(), id)?;
        let vm = {
            let mut st = self.lock();
            match st.vm.as_ref().is_some_and(|v| v.api) {
                true => st.vm.take(),
                false => None,
            }
        };
        if let Some(vm) = vm {
            self.orphan_all(LOST_STATUS);
            blocking(move || {
                stop_vm(&vm);
                Ok(())
            })
            .await?;
        }
        api_mut(&mut self.lock(), id)?.life.stopped(status);
        Ok(())
    }

    /// StopSandbox: the VM stops (its taps go before containerd's CNI teardown).
    pub async fn stop_sandbox(&self, id: &str) -> Result<(), ShimError> {
        log::info!("stopping sandbox {id}");
        self.end_vm(id, 0).await
    }

    /// ShutdownSandbox: stops what is left; the shim may exit after.
    pub async fn shutdown_sandbox(&self, id: &str) -> Result<(), ShimError> {
        self.end_vm(id, 0).await?;
        let st = self.lock();
        if let Some(a) = &st.api {
            let _ = std::fs::remove_file(a.bundle.join(BUNDLE_RECORD));
        }
        Ok(())
    }

    /// Called every so often while the sandbox is ready: a VM that ended by itself (the
    /// VMM died) stops the sandbox. Returns `false` once there is nothing to watch.
    pub async fn check_sandbox_vm(&self, id: &str) -> bool {
        let ready = self
            .lock()
            .api
            .as_ref()
            .is_some_and(|a| a.life.id() == id && a.life.phase() == Phase::Ready);
        let Some(vm) = self.api_vm().filter(|_| ready) else {
            return false;
        };
        let Some(why) = vm.sandbox.vm_stopped() else {
            return true;
        };
        log::error!("sandbox {id}: the VM ended: {why}");
        if let Err(e) = self.end_vm(id, LOST_STATUS).await {
            log::warn!("sandbox {id}: {e}");
        }
        false
    }

    /// WaitSandbox: its exit, when it comes.
    pub fn wait_sandbox(&self, id: &str) -> Result<watch::Receiver<Option<Exit>>, ShimError> {
        Ok(api_mut(&mut self.lock(), id)?.life.subscribe())
    }

    /// SandboxStatus.
    pub fn sandbox_state(&self, id: &str) -> Result<SandboxState, ShimError> {
        let mut st = self.lock();
        let a = api_mut(&mut st, id)?;
        Ok(SandboxState {
            state: a.life.state_name(),
            created_at: a.life.created_at(),
            exited: a.life.exited(),
        })
    }

    /// PingSandbox: fails once the VM has ended.
    pub fn ping_sandbox(&self, id: &str) -> Result<(), ShimError> {
        let ready = api_mut(&mut self.lock(), id)?.life.phase() == Phase::Ready;
        match self.api_vm().filter(|_| ready) {
            None => Err(ShimError::State(format!("sandbox {id} is not running"))),
            Some(vm) => match vm.sandbox.vm_stopped() {
                Some(why) => Err(ShimError::State(format!("sandbox {id}: {why}"))),
                None => Ok(()),
            },
        }
    }

    /// SandboxMetrics: the statistics of each of the pod's containers in the guest that
    /// has them (none before the VM runs).
    pub async fn sandbox_stats(&self, id: &str) -> Result<Vec<ContainerStats>, ShimError> {
        api_mut(&mut self.lock(), id)?;
        let Some(vm) = self.api_vm() else {
            return Ok(Vec::new());
        };
        let ids: Vec<String> = self.lock().containers.keys().cloned().collect();
        blocking(move || {
            let stats = ids.iter().filter_map(|c| {
                vm.sandbox
                    .stats(c)
                    .inspect_err(|e| log::debug!("no statistics of {c}: {e}"))
                    .ok()
            });
            Ok(stats.collect())
        })
        .await
    }
}
