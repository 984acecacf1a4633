//! The cost side: per-run samples of each metric, their median, p95 and n, and each
//! runtime's ratio to runc.

use std::collections::BTreeMap;

use sandbox_vm_probe::{Read, Report, Timed};

use super::runner::Sample;

#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("no samples")]
    Empty,
}

/// A cost metric measured once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    StartToFirstOutput,
    IdleMemory,
    IdleMemoryOutsideGuestRam,
    Getppid,
    File4k,
    AnonPage,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::StartToFirstOutput,
        Metric::IdleMemory,
        Metric::IdleMemoryOutsideGuestRam,
        Metric::Getppid,
        Metric::File4k,
        Metric::AnonPage,
    ];

    /// The CSV/JSON name, with its unit.
    pub fn key(self) -> &'static str {
        match self {
            Metric::StartToFirstOutput => "start_to_first_output_ms",
            Metric::IdleMemory => "idle_host_pss_mib",
            Metric::IdleMemoryOutsideGuestRam => "idle_host_pss_outside_guest_ram_mib",
            Metric::Getppid => "getppid_ns",
            Metric::File4k => "file_4k_cycle_us",
            Metric::AnonPage => "anon_page_ns",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::StartToFirstOutput => "start -> first output (ms)",
            Metric::IdleMemory => "host PSS per idle sandbox (MiB)",
            Metric::IdleMemoryOutsideGuestRam => "idle PSS outside guest RAM (MiB)",
            Metric::Getppid => "getppid syscall (ns)",
            Metric::File4k => "4 KiB file create/write/read/unlink (us)",
            Metric::AnonPage => "anon memory map/touch/unmap per page (ns)",
        }
    }

    fn from_timed(t: &Read<Timed>, scale: f64) -> Option<f64> {
        t.ok().and_then(Timed::ns_per_op).map(|ns| ns / scale)
    }

    /// This metric's value in one probe report (the in-sandbox loops), if it has one.
    pub fn of_report(self, r: &Report) -> Option<f64> {
        match self {
            Metric::Getppid => Self::from_timed(&r.cost.getppid, 1.0),
            Metric::File4k => Self::from_timed(&r.cost.file_4k, 1e3),
            Metric::AnonPage => Self::from_timed(&r.cost.anon_page, 1.0),
            Metric::StartToFirstOutput | Metric::IdleMemory | Metric::IdleMemoryOutsideGuestRam => {
                None
            }
        }
    }

    pub fn of_sample(self, s: &Sample) -> Option<f64> {
        match self {
            Metric::StartToFirstOutput => Some(s.first_output_ms),
            Metric::IdleMemory => s.idle_pss_kib.map(|k| k as f64 / 1024.0),
            Metric::IdleMemoryOutsideGuestRam => match (s.idle_pss_kib, s.guest_ram_pss_kib) {
                (Some(all), Some(ram)) => Some(all.saturating_sub(ram) as f64 / 1024.0),
                _ => None,
            },
            _ => self.of_report(&s.report),
        }
    }
}

/// A value with three or so significant digits.
pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    pub median: f64,
    pub p95: f64,
    pub n: usize,
}

/// Median (mean of the middle two for even n) and nearest-rank p95.
pub fn stats(values: &[f64]) -> Result<Stats, CostError> {
    if values.is_empty() {
        return Err(CostError::Empty);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
    Ok(Stats {
        median,
        p95: v[rank - 1],
        n,
    })
}

/// One metric across runtimes: stats per runtime and ratio of medians to runc's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricRow {
    pub metric: Metric,
    pub stats: BTreeMap<String, Stats>,
    pub ratio_to_runc: BTreeMap<String, f64>,
}

pub fn summarize(samples: &BTreeMap<String, Vec<Sample>>, reference: &str) -> Vec<MetricRow> {
    Metric::ALL
        .iter()
        .map(|&metric| {
            let stats: BTreeMap<String, Stats> = samples
                .iter()
                .filter_map(|(rt, ss)| {
                    let vals: Vec<f64> = ss.iter().filter_map(|s| metric.of_sample(s)).collect();
                    stats(&vals).ok().map(|st| (rt.clone(), st))
                })
                .collect();
            let base = stats.get(reference).map(|s| s.median);
            let ratio_to_runc = match base {
                Some(b) if b > 0.0 => stats
                    .iter()
                    .map(|(rt, s)| (rt.clone(), s.median / b))
                    .collect(),
                _ => BTreeMap::new(),
            };
            MetricRow {
                metric,
                stats,
                ratio_to_runc,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p95() {
        let s = stats(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.p95, s.n), (3.0, 5.0, 3));
        let s = stats(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.p95), (2.5, 4.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(stats(&v).unwrap().p95, 95.0);
        assert!(stats(&[]).is_err());
    }
}
