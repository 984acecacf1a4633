//! What a snapshot directory looks like from outside the VMM: its file names, the format
//! version and the hashes that identify a kernel (the runtime keys its templates with
//! them). Reading and writing the files is the VMM's (`vmm::persist`).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The first field of every state file.
pub const MAGIC: &str = "sandbox-vm snapshot";
/// Bumped whenever a saved type changes shape or meaning; other versions are refused.
pub const FORMAT_VERSION: u32 = 1;
/// The state file in a snapshot directory; a directory holding it is a whole snapshot
/// (the VMM writes it last, by rename).
pub const STATE_FILE: &str = "state.json";
/// The guest-memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hashes a file with SHA-256, as hex (the kernel identity, the template cache key).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_known_digest() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b""), empty);
        let dir = std::env::temp_dir().join(format!("vmm-api-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(sha256_file(&f).unwrap(), sha256_hex(b"abc"));
        assert!(sha256_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
