"""Host memory and CPU of idle pods, for RuntimeClass `overhead.podFixed`: N kubelet-style
pods (a cgroup parent each), each the busybox pause container alone, booted one after the
other; once all have settled (SETTLE_S after the last boot), the PSS of each pod's host
processes (shim, VMM, virtiofsd; guest RAM the guest touched is in the VMM's) and its pod
cgroup's memory usage and CPU time (PodSandboxStats), then over MEASURE_S the CPU each
idle pod uses. Prints one `OVERHEAD {json}` line. Run by `e2e_cri`'s ignored
`idle_pod_overhead` (see the README, "Pod overhead").

usage: cri_pod_overhead.py CONTAINERD_SOCK LOG_DIR VM_ROOT IMAGE [N]
"""

import json
import os
import statistics
import sys
import time

import cri_e2e as cri
from cri_api.v1 import api_pb2 as pb

SETTLE_S = 20
MEASURE_S = 20


def pod_stats(pod):
    s = cri.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod), timeout=60).stats
    return s.linux.memory.usage_bytes.value, s.linux.cpu.usage_core_nano_seconds.value


def main(n):
    top = f"/svm-overhead-{os.getpid()}"
    pods = []
    try:
        for i in range(n):
            parent = f"{top}/burstable/pod{i}"
            cri.make_kubelet_pod_cgroup(parent)
            t0 = time.time()
            pod, _ = cri.run_pod(f"idle{i}", {}, cgroup_parent=parent)
            pods.append(pod)
            cri.log(f"pod {i} up after {time.time() - t0:.1f} s")
        time.sleep(SETTLE_S)
        rows = []
        for pod in pods:
            kinds = cri.pss_by_kind(cri.pod_processes(pod))
            mem, cpu0 = pod_stats(pod)
            rows.append({"pss_kib": kinds, "pss_total_kib": sum(kinds.values()),
                         "cgroup_memory_bytes": mem, "cpu0_ns": cpu0})
        time.sleep(MEASURE_S)
        for pod, r in zip(pods, rows):
            _, cpu1 = pod_stats(pod)
            r["idle_cpu_millicores"] = round((cpu1 - r.pop("cpu0_ns")) / (MEASURE_S * 1e6), 1)
        med = lambda k: statistics.median(r[k] for r in rows)
        out = {
            "pods": rows,
            "median_pss_total_kib": med("pss_total_kib"),
            "median_cgroup_memory_mib": round(med("cgroup_memory_bytes") / 2**20, 1),
            "median_idle_cpu_millicores": med("idle_cpu_millicores"),
        }
        print("OVERHEAD " + json.dumps(out), flush=True)
    finally:
        for pod in pods:
            cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=600)
            cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=600)
        cri.remove_cgroup_tree(top)


if __name__ == "__main__":
    cri.connect(*sys.argv[1:5])
    main(int(sys.argv[5]) if len(sys.argv) > 5 else 3)
