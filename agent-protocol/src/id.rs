//! The one rule for container and exec ids, shared by the host runtime (an id names a
//! state directory there) and the agent (it names a cgroup and a mount point there).

/// Longest accepted id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid container id {0:?}: use 1-{MAX_ID_LEN} of [A-Za-z0-9_.-], not starting with '.'")]
pub struct IdError(pub String);

/// Checks a container or exec id: `[A-Za-z0-9_.-]{1,64}`, not starting with `.` (so it is
/// never `.`, `..` or a hidden file name, and never contains `/`).
pub fn validate_container_id(id: &str) -> Result<(), IdError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdError(id.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rule() {
        for ok in ["a", "abc-DEF_1.2", &"x".repeat(64), "a..b"] {
            validate_container_id(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert_eq!(
                validate_container_id(bad),
                Err(IdError(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn message_names_the_rule() {
        let e = validate_container_id("a/b").unwrap_err().to_string();
        assert!(e.contains("\"a/b\"") && e.contains("[A-Za-z0-9_.-]"), "{e}");
    }
}
