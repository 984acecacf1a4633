//! Scratch directories under `$TMPDIR`.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<prefix>-<pid>-<n>`: a name no other test of this process (or another) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// `$TMPDIR/<name>-<pid>`, emptied of what an earlier run left and created. The caller
/// removes it (tests that keep it when they fail, to be looked at).
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A directory removed (with what is in it) when dropped, also when the test fails.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/<prefix>-<pid>-<n>`, a new one each call.
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// `$TMPDIR/<name>-<pid>`, as [`fresh_dir`] makes it.
    pub fn named(name: &str) -> TempDir {
        TempDir(fresh_dir(name))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_distinct_and_go_when_dropped() {
        let (a, b) = (TempDir::new("ts-dir"), TempDir::new("ts-dir"));
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), "x").unwrap();
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
        assert!(b.is_dir());
    }

    #[test]
    fn a_named_dir_starts_empty() {
        let d = fresh_dir("ts-fresh");
        std::fs::write(d.join("old"), "x").unwrap();
        let t = TempDir::named("ts-fresh");
        assert_eq!(t.path(), d);
        assert_eq!(std::fs::read_dir(&t).unwrap().count(), 0);
    }
}
