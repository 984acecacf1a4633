//! Making a restored clone its own machine.
//!
//! Every sandbox restored from one template starts with the template's kernel RNG state,
//! clock and hostname. Right after a restore the host sends a [`CloneIdentity`]: fresh
//! entropy from the host's getrandom, which the agent mixes into the kernel pool and then
//! forces a CRNG reseed with (RNDADDENTROPY + RNDRESEEDCRNG), so clones diverge from the
//! first random byte they read; the host's wall clock, which the agent sets
//! (CLOCK_REALTIME; the guest's monotonic clock continues from the snapshot); and the
//! clone's hostname. The agent answers with a [`CloneApplied`].
//!
//! Firecracker relies on a VMGenID ACPI device for the reseed; our guests have no ACPI,
//! hence the agent request.

use serde::{Deserialize, Serialize};

/// Entropy the host sends with each clone identity.
pub const CLONE_ENTROPY_BYTES: usize = 64;
/// At least this much entropy is required (the CRNG reseeds from 256 bits).
pub const MIN_CLONE_ENTROPY_BYTES: usize = 32;
/// At most this much is accepted (the kernel pool's input is bounded).
pub const MAX_CLONE_ENTROPY_BYTES: usize = 512;
/// Longest hostname Linux accepts (HOST_NAME_MAX).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// A clone identity the agent must refuse, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CloneError {
    #[error("clone entropy of {0} bytes is out of range ({MIN_CLONE_ENTROPY_BYTES}..={MAX_CLONE_ENTROPY_BYTES})")]
    Entropy(usize),
    #[error("clone hostname {0:?} is not a valid hostname (1-64 of a-z, A-Z, 0-9, '-', '.')")]
    Hostname(String),
    #[error("clone wall clock {0} ns is before 2020: the host clock is wrong")]
    Clock(u64),
}

/// What the host gives a clone right after its restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneIdentity {
    /// Fresh host randomness, credited to the guest pool before the CRNG reseed.
    pub entropy: Vec<u8>,
    /// The host's CLOCK_REALTIME, ns since the Unix epoch, read just before sending.
    pub realtime_ns: u64,
    /// The clone's hostname (the sandbox id, as a cold boot would set it).
    pub hostname: String,
}

/// 2020-01-01T00:00:00Z: any sane host clock is past it.
const EARLIEST_REALTIME_NS: u64 = 1_577_836_800 * 1_000_000_000;

impl CloneIdentity {
    /// Checks sizes and the hostname's characters (the agent calls it before acting).
    pub fn validate(&self) -> Result<(), CloneError> {
        let n = self.entropy.len();
        if !(MIN_CLONE_ENTROPY_BYTES..=MAX_CLONE_ENTROPY_BYTES).contains(&n) {
            return Err(CloneError::Entropy(n));
        }
        let h = &self.hostname;
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if h.is_empty() || h.len() > MAX_HOSTNAME_LEN || !h.chars().all(ok_char) {
            return Err(CloneError::Hostname(h.clone()));
        }
        if self.realtime_ns < EARLIEST_REALTIME_NS {
            return Err(CloneError::Clock(self.realtime_ns));
        }
        Ok(())
    }
}

/// The agent's answer to a clone identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneApplied {
    /// How far the guest's wall clock was stepped (new - old), in ns: about the time the
    /// template sat on disk.
    pub clock_step_ns: i64,
    /// Entropy bits credited to the guest pool.
    pub entropy_bits: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> CloneIdentity {
        CloneIdentity {
            entropy: vec![7; CLONE_ENTROPY_BYTES],
            realtime_ns: 1_800_000_000 * 1_000_000_000,
            hostname: "sandbox-1.local".into(),
        }
    }

    #[test]
    fn a_good_identity_passes_and_round_trips() {
        let id = identity();
        id.validate().unwrap();
        let text = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<CloneIdentity>(&text).unwrap(), id);
        assert!(serde_json::from_str::<CloneIdentity>(
            r#"{"entropy":[],"realtime_ns":1,"hostname":"a","x":1}"#
        )
        .is_err());
    }

    #[test]
    fn bad_identities_are_refused() {
        let mut id = identity();
        id.entropy.truncate(MIN_CLONE_ENTROPY_BYTES - 1);
        assert_eq!(id.validate(), Err(CloneError::Entropy(31)));
        id.entropy = vec![0; MAX_CLONE_ENTROPY_BYTES + 1];
        assert!(id.validate().is_err());
        for bad in ["", "a b", "x/y", &"h".repeat(MAX_HOSTNAME_LEN + 1), "naïve"] {
            let id = CloneIdentity {
                hostname: bad.to_string(),
                ..identity()
            };
            assert!(
                matches!(id.validate(), Err(CloneError::Hostname(_))),
                "{bad:?}"
            );
        }
        let id = CloneIdentity {
            realtime_ns: 5,
            ..identity()
        };
        assert_eq!(id.validate(), Err(CloneError::Clock(5)));
    }
}
