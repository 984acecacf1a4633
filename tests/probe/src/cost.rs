//! The cost loops. Each runs for a time budget rather than a fixed count: one system call
//! costs ~100 ns natively and can cost milliseconds on a host that emulates guest kernel
//! mode, and the probe has to finish in both.

use std::fs;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use sandbox_vm_probe::{Read, Timed};

/// Runs `op` (one op per call) until `budget` has passed and at least `min_ops` ran.
fn timed(
    budget: Duration,
    min_ops: u64,
    mut op: impl FnMut() -> std::io::Result<()>,
) -> Read<Timed> {
    let start = Instant::now();
    let mut ops = 0u64;
    let mut batch = 1u64;
    while ops < min_ops || start.elapsed() < budget {
        for _ in 0..batch {
            if let Err(e) = op() {
                return Read::from_io(Err(e));
            }
        }
        ops += batch;
        // Grow batches so the clock is read rarely once the op is known to be fast.
        if start.elapsed() < budget / 100 {
            batch = (batch * 2).min(1 << 16);
        }
    }
    Read::Ok(Timed {
        ops,
        total_ns: start.elapsed().as_nanos() as u64,
    })
}

pub fn getppid(budget: Duration) -> Read<Timed> {
    timed(budget, 16, || {
        // SAFETY: getppid has no arguments and cannot fail; the raw call keeps libc from
        // answering it from a cache.
        unsafe { libc::syscall(libc::SYS_getppid) };
        Ok(())
    })
}

pub fn file_4k(dir: &str, budget: Duration) -> Read<Timed> {
    let path = format!("{dir}/sandbox-vm-probe-{}", std::process::id());
    let block = [0x5au8; 4096];
    let mut back = [0u8; 4096];
    timed(budget, 4, || {
        fs::File::create(&path)?.write_all(&block)?;
        fs::File::open(&path)?.read_exact(&mut back)?;
        fs::remove_file(&path)?;
        if back != block {
            return Err(std::io::Error::other("read back other bytes than written"));
        }
        Ok(())
    })
}

const CHURN_PAGES: usize = 64;

fn churn_once() -> std::io::Result<()> {
    let len = CHURN_PAGES * 4096;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    for i in 0..CHURN_PAGES {
        // SAFETY: `i * 4096` is inside the `len`-byte mapping made above.
        unsafe { std::ptr::write_volatile(p.cast::<u8>().add(i * 4096), 1) };
    }
    // SAFETY: `p`/`len` is exactly the mapping made above, unmapped once.
    if unsafe { libc::munmap(p, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One op = one page: the loop maps 64 pages, touches each, unmaps them.
pub fn anon_page(budget: Duration) -> Read<Timed> {
    match timed(budget, 2, churn_once) {
        Read::Ok(t) => Read::Ok(Timed {
            ops: t.ops * CHURN_PAGES as u64,
            total_ns: t.total_ns,
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_count_ops() {
        let b = Duration::from_millis(5);
        let g = getppid(b).ok().copied().unwrap();
        assert!(g.ops >= 16 && g.total_ns >= 5_000_000);
        let f = file_4k(&std::env::temp_dir().to_string_lossy(), b)
            .ok()
            .copied()
            .unwrap();
        assert!(f.ops >= 4);
        let a = anon_page(b).ok().copied().unwrap();
        assert_eq!(a.ops % CHURN_PAGES as u64, 0);
    }

    #[test]
    fn a_failing_op_is_reported() {
        assert!(matches!(
            file_4k("/nonexistent-dir", Duration::from_millis(1)),
            Read::Absent
        ));
    }
}
