//! The guest agent's cgroup statistics of a container in containerd's cgroups v1
//! `Metrics` message (what runc's shim returns on cgroup v1 hosts, and what CRI 1.6 reads
//! for ContainerStats), packed as an `Any` with containerd's type URL.

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use sandbox::ContainerStats;

/// containerd's type URL for [`Metrics`] (its full protobuf name, as typeurl registers it).
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// The agent's statistics as cgroups v1 metrics (unknown values are 0).
pub fn metrics(s: &ContainerStats) -> Metrics {
    let mut m = Metrics::new();
    let mut mem = MemoryStat::new();
    let mut usage = MemoryEntry::new();
    usage.usage = s.memory_usage.unwrap_or(0);
    usage.limit = s.memory_limit.unwrap_or(u64::MAX);
    mem.usage = Some(usage).into();
    m.memory = Some(mem).into();
    let mut oom = MemoryOomControl::new();
    oom.oom_kill = s.oom_kills.unwrap_or(0);
    m.memory_oom_control = Some(oom).into();
    let mut cpu = CPUStat::new();
    let mut cpu_usage = CPUUsage::new();
    cpu_usage.total = s.cpu_usage_ns.unwrap_or(0);
    cpu.usage = Some(cpu_usage).into();
    m.cpu = Some(cpu).into();
    let mut pids = PidsStat::new();
    pids.current = s.pids_current.unwrap_or(0);
    pids.limit = s.pids_limit.unwrap_or(0);
    m.pids = Some(pids).into();
    m
}

/// The pod's statistics: its containers' summed (a limit from the first that has one;
/// the VM's RAM bounds the pod anyway).
pub fn sum(all: &[ContainerStats]) -> ContainerStats {
    let add = |f: fn(&ContainerStats) -> Option<u64>| {
        all.iter().filter_map(f).reduce(|a, b| a.saturating_add(b))
    };
    ContainerStats {
        memory_usage: add(|s| s.memory_usage),
        memory_limit: all.iter().find_map(|s| s.memory_limit),
        oom_kills: add(|s| s.oom_kills),
        cpu_usage_ns: add(|s| s.cpu_usage_ns),
        pids_current: add(|s| s.pids_current),
        pids_limit: None,
    }
}

/// [`metrics`] packed for a StatsResponse.
pub fn to_any(s: &ContainerStats) -> Any {
    let mut any = Any::new();
    any.type_url = METRICS_TYPE_URL.into();
    any.value = metrics(s).write_to_bytes().expect("metrics serialize");
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::MessageFull;

    #[test]
    fn stats_round_trip_through_the_any() {
        let s = ContainerStats {
            memory_usage: Some(5 << 20),
            memory_limit: Some(64 << 20),
            oom_kills: Some(1),
            cpu_usage_ns: Some(123_456),
            pids_current: Some(3),
            pids_limit: None,
        };
        let any = to_any(&s);
        assert_eq!(any.type_url, Metrics::descriptor().full_name());
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage.usage, 5 << 20);
        assert_eq!(m.memory.usage.limit, 64 << 20);
        assert_eq!(m.memory_oom_control.oom_kill, 1);
        assert_eq!(m.cpu.usage.total, 123_456);
        assert_eq!((m.pids.current, m.pids.limit), (3, 0));
    }

    #[test]
    fn a_pods_statistics_are_its_containers_summed() {
        let one = |mem, cpu, pids| ContainerStats {
            memory_usage: Some(mem),
            memory_limit: None,
            oom_kills: Some(0),
            cpu_usage_ns: Some(cpu),
            pids_current: pids,
            pids_limit: Some(10),
        };
        let s = sum(&[one(5, 100, Some(2)), one(7, 50, None)]);
        assert_eq!(s.memory_usage, Some(12));
        assert_eq!(s.cpu_usage_ns, Some(150));
        assert_eq!(s.pids_current, Some(2));
        assert_eq!(
            (s.oom_kills, s.memory_limit, s.pids_limit),
            (Some(0), None, None)
        );
        assert_eq!(sum(&[]).memory_usage, None);
    }
}
