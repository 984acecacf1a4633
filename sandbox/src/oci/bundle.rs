//! Loading and checking an OCI bundle before anything is created for it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::validate;

/// Why a bundle cannot be used; each message names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {0} does not exist or is not a directory")]
    NoBundle(PathBuf),
    #[error("bundle {0} has no config.json (create one with `sandbox-vm spec`)")]
    NoConfig(PathBuf),
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("invalid {path}: {err}")]
    Invalid {
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("invalid config.json: {0}")]
    Spec(super::validate::ValidateError),
    #[error("unsupported ociVersion {0:?} in config.json (supported: 1.0.0 to {max})", max = super::OCI_VERSION)]
    Version(String),
    #[error("config.json has no root.path (the container's root filesystem)")]
    NoRoot,
    #[error("config.json has no process to run")]
    NoProcess,
    #[error("rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
}

/// A checked bundle.
#[derive(Debug)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute rootfs directory.
    pub rootfs: PathBuf,
}

/// Whether this runtime understands `version` (any 1.x up to [`super::OCI_VERSION`]'s
/// minor; pre-release suffixes such as `1.0.2-dev` are fine).
pub fn version_supported(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(1)), Some(Ok(minor)), Some(Ok(_)), None) => minor <= 2,
        _ => false,
    }
}

/// Reads `<dir>/config.json` and checks what `create` needs.
pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    let dir = dir
        .canonicalize()
        .ok()
        .filter(|d| d.is_dir())
        .ok_or_else(|| BundleError::NoBundle(dir.to_path_buf()))?;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => BundleError::NoConfig(dir.clone()),
        _ => BundleError::Read {
            path: path.clone(),
            err,
        },
    })?;
    let invalid = |err| BundleError::Invalid {
        path: path.clone(),
        err,
    };
    // Names first, from the JSON itself: a typed parse rejects them only with a long
    // list of every valid name.
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(invalid)?;
    validate::raw_names(&raw).map_err(BundleError::Spec)?;
    let spec: Spec = serde_json::from_value(raw).map_err(invalid)?;
    if !version_supported(spec.version()) {
        return Err(BundleError::Version(spec.version().clone()));
    }
    validate::spec(&spec).map_err(BundleError::Spec)?;
    let root = spec.root().as_ref().ok_or(BundleError::NoRoot)?;
    if spec.process().is_none() {
        return Err(BundleError::NoProcess);
    }
    let rootfs = dir.join(root.path());
    if !rootfs.is_dir() {
        return Err(BundleError::NoRootfs(rootfs));
    }
    Ok(Bundle { dir, spec, rootfs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(name: &str, config: Option<&str>, rootfs: bool) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("svm-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(c) = config {
            std::fs::write(dir.join("config.json"), c).unwrap();
        }
        if rootfs {
            std::fs::create_dir(dir.join("rootfs")).unwrap();
        }
        dir
    }

    const GOOD: &str = r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"mount"}]}}"#;

    #[test]
    fn versions() {
        for v in ["1.0.0", "1.0.2-dev", "1.1.0", "1.2.1"] {
            assert!(version_supported(v), "{v}");
        }
        for v in ["0.9.0", "2.0.0", "1.3.0", "1.0", "x"] {
            assert!(!version_supported(v), "{v}");
        }
    }

    #[test]
    fn good_bundle_loads() {
        let d = bundle_with("good", Some(GOOD), true);
        let b = load(&d).unwrap();
        assert_eq!(b.rootfs, d.canonicalize().unwrap().join("rootfs"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn each_problem_has_its_error() {
        let cases: [(&str, Option<&str>, bool, &str); 5] = [
            ("noconfig", None, true, "has no config.json"),
            ("badjson", Some("{not json"), true, "invalid"),
            (
                "version",
                Some(&GOOD.replace("1.0.2", "2.0.0")),
                true,
                "unsupported ociVersion \"2.0.0\"",
            ),
            ("norootfs", Some(GOOD), false, "rootfs"),
            (
                "noroot",
                Some(
                    r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"linux":{"namespaces":[{"type":"mount"}]}}"#,
                ),
                true,
                "no root.path",
            ),
        ];
        for (name, config, rootfs, want) in cases {
            let d = bundle_with(name, config, rootfs);
            let err = load(&d).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(!err.contains('\n'), "{name}: one line: {err}");
            let _ = std::fs::remove_dir_all(d);
        }
        assert!(matches!(
            load(Path::new("/nonexistent/bundle")),
            Err(BundleError::NoBundle(_))
        ));
    }
}
