//! What `start`, `delete` and Create read from a task's bundle, and the errors of the
//! `start` and `delete` actions: each names what failed and the task, bundle or file.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// Why `start`, `delete` or reading a bundle failed; one line each.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("no task id given (-id)")]
    NoId,
    #[error("cannot find the bundle (the current directory): {0}")]
    Cwd(std::io::Error),
    #[error("the bundle {0} has no config.json")]
    NoConfig(PathBuf),
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path} is not a valid OCI runtime spec: {err}")]
    Parse {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("{path}: {err}")]
    Annotations {
        path: PathBuf,
        err: sandbox::oci::translate::TranslateError,
    },
    #[error("TTRPC_ADDRESS (containerd's ttrpc socket) is not set in the shim's environment")]
    NoTtrpcAddress,
    #[error("cannot start the shim server for pod {grouping}: {err}")]
    Spawn {
        grouping: String,
        err: containerd_shim::Error,
    },
    #[error("cannot write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },
    #[error("cannot clean up: {0}")]
    Cleanup(#[from] crate::cleanup::CleanupError),
    #[error("cannot answer containerd: {0}")]
    Answer(String),
}

/// The bundle: `start` and `delete` run with it as their current directory.
pub fn current() -> Result<PathBuf, BundleError> {
    std::env::current_dir().map_err(BundleError::Cwd)
}

/// The bundle's `config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec, BundleError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => BundleError::NoConfig(bundle.to_path_buf()),
        _ => BundleError::Read {
            path: path.clone(),
            err,
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|err| BundleError::Parse { path, err })
}

/// The shim grouping of task `id` with bundle spec `spec` (read from `bundle`): its pod's
/// sandbox id, or the task's own id outside a pod.
pub fn grouping(bundle: &Path, spec: &Spec, id: &str) -> Result<String, BundleError> {
    let cri = sandbox::oci::annotations::Annotations::parse(spec)
        .map_err(|err| BundleError::Annotations {
            path: bundle.join("config.json"),
            err,
        })?
        .cri;
    Ok(cri.grouping(id).to_string())
}

/// An action's failure as the one line the shim prints: "ACTION of task ID (bundle
/// DIR): why".
pub fn describe(action: &str, id: &str, bundle: Option<&Path>, err: &BundleError) -> String {
    let id = if id.is_empty() { "(no id)" } else { id };
    match bundle {
        Some(b) => format!("{action} of task {id} (bundle {}): {err}", b.display()),
        None => format!("{action} of task {id}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shim-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_missing_config_names_the_bundle() {
        let d = dir("missing");
        let e = load_spec(&d).unwrap_err();
        assert_eq!(
            describe("start", "t1", Some(&d), &e),
            format!(
                "start of task t1 (bundle {b}): the bundle {b} has no config.json",
                b = d.display()
            )
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_invalid_config_names_the_file_and_the_place() {
        let d = dir("invalid");
        std::fs::write(d.join("config.json"), "{\"ociVersion\": 7}").unwrap();
        let msg = load_spec(&d).unwrap_err().to_string();
        let want = format!(
            "{}/config.json is not a valid OCI runtime spec: ",
            d.display()
        );
        assert!(msg.starts_with(&want), "{msg}");
        assert!(msg.contains("line 1 column"), "{msg}");
        // A directory where the file should be: the read error, with the path.
        std::fs::remove_file(d.join("config.json")).unwrap();
        std::fs::create_dir(d.join("config.json")).unwrap();
        let msg = load_spec(&d).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("cannot read {}/config.json: ", d.display())),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_annotation_names_the_file_and_the_key() {
        let d = dir("annotation");
        let spec = r#"{"ociVersion": "1.0.2", "annotations": {"io.sandbox-vm.vcpus": "lots"}}"#;
        std::fs::write(d.join("config.json"), spec).unwrap();
        let s = load_spec(&d).unwrap();
        let msg = grouping(&d, &s, "t1").unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{}/config.json: ", d.display()))
                && msg.contains("io.sandbox-vm.vcpus"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_pods_tasks_share_the_grouping_of_its_sandbox_id() {
        let d = dir("grouping");
        let spec = r#"{"ociVersion": "1.0.2", "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "pod1"}}"#;
        std::fs::write(d.join("config.json"), spec).unwrap();
        let s = load_spec(&d).unwrap();
        assert_eq!(grouping(&d, &s, "c1").unwrap(), "pod1");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_id_and_no_bundle_are_said_so() {
        assert_eq!(
            describe("delete", "", None, &BundleError::NoId),
            "delete of task (no id): no task id given (-id)"
        );
    }
}
