//! The workspace's layering, checked on its sources: front ends → `sandbox` → the VMM
//! (through `vmm-api`) and the agent protocol.
//! - the shim depends on `sandbox` only of our crates, the OCI CLI reaches `vmm` only for
//!   `boot`, `sandbox` knows the VMM only through `vmm-api`;
//! - no library crate reads the environment (binaries resolve it and pass it down);
//! - no module imports another that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace crates a package depends on, by directory name (normal dependencies).
fn our_dependencies(crate_dir: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(crate_dir).join("Cargo.toml")).unwrap();
    let normal = text
        .split("\n[")
        .find(|s| s.starts_with("dependencies]"))
        .unwrap_or_default();
    normal
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("path = \"../")?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A file's code lines, without comments and without its test module (`#[cfg(test)]`
/// then `mod`).
fn code(p: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(p).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod "))
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn front_ends_reach_the_vmm_and_the_agent_only_through_sandbox() {
    let shim = our_dependencies("shim");
    assert_eq!(shim, BTreeSet::from(["sandbox".to_string()]), "shim");
    let cli = our_dependencies("runtime-cli");
    assert!(!cli.contains("agent-protocol"), "runtime-cli: {cli:?}");
    assert!(!cli.contains("vmm-api"), "runtime-cli: {cli:?}");
    let sandbox = our_dependencies("sandbox");
    assert!(!sandbox.contains("vmm"), "sandbox: {sandbox:?}");
    // The CLI's own code names `vmm` only in `boot`.
    for p in sources(&root().join("runtime-cli/src")) {
        if p.ends_with("boot_cmd.rs") {
            continue;
        }
        let uses = code(&p).iter().any(|l| l.contains("vmm::"));
        assert!(!uses, "{} uses the vmm crate", p.display());
    }
}

#[test]
fn no_library_crate_reads_the_environment() {
    let libraries = [
        "sandbox/src",
        "vmm/src",
        "vmm-api/src",
        "agent-protocol/src",
        "bench/src",
    ];
    let mut found = Vec::new();
    for dir in libraries {
        for p in sources(&root().join(dir)) {
            // A binary's entry point may: it resolves the environment and passes it down.
            if p.components().any(|c| c.as_os_str() == "bin") {
                continue;
            }
            for (n, l) in code(&p).iter().enumerate() {
                if l.contains("env::var") || l.contains("env::vars") {
                    found.push(format!("{}:{}: {}", p.display(), n + 1, l.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "environment read in a library: {found:#?}"
    );
}

/// The crate-level modules `file` (in crate `src`) takes names from: `crate::NAME`.
fn imported_modules(file: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in code(file) {
        let mut rest = l.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The crate-level module a source file belongs to (`a.rs`, `a/…`, `a_tests.rs` → `a`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let crates = [
        "sandbox",
        "shim",
        "runtime-cli",
        "vmm",
        "vmm-api",
        "guest-agent",
        "agent-protocol",
        "bench",
    ];
    let mut cycles = Vec::new();
    for c in crates {
        let src = root().join(c).join("src");
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in sources(&src) {
            let Some(m) = module_of(&src, &f) else {
                continue;
            };
            if f.to_string_lossy().ends_with("_tests.rs") || f.ends_with("tests.rs") {
                continue;
            }
            let to: Vec<String> = imported_modules(&f)
                .into_iter()
                .filter(|t| *t != m)
                .collect();
            edges.entry(m).or_default().extend(to);
        }
        for (a, tos) in &edges {
            for b in tos {
                if a < b && edges.get(b).is_some_and(|back| back.contains(a)) {
                    cycles.push(format!("{c}: {a} <-> {b}"));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules importing each other: {cycles:#?}"
    );
}
