"""CRI e2e: a real CRI client (PyPI container-runtime-interface-api) drives containerd's
CRI plugin with runtime_handler="sandbox-vm". Two pods (two VM boots); every failed
check raises. Prints one `MEASUREMENTS {json}` line.

usage: cri_e2e.py CONTAINERD_SOCK LOG_DIR VM_ROOT IMAGE

cri_net_e2e.py imports its helpers (after `connect`).
"""

import json
import os
import sys
import time

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

HANDLER = "sandbox-vm"
BOOT_TIMEOUT = 1800  # seconds; a boot takes ~30 s on an idle host that emulates guest kernel mode, 10 min under heavy load

LOG_DIR = VM_ROOT = IMAGE = rt = None


def connect(sock, log_dir, vm_root, image):
    """Sets the containerd socket, CRI log directory, shim state root and image to use."""
    global LOG_DIR, VM_ROOT, IMAGE, rt
    LOG_DIR, VM_ROOT, IMAGE = log_dir, vm_root, image
    rt = rpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{sock}"))


def log(msg):
    print(f"[cri-e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_pod(name, annotations, network=pb.NODE, cgroup_parent=""):
    """RunPodSandbox. With the node's network (`pb.NODE`, the default here) the CRI plugin
    skips CNI and the VM has loopback only (this test's containerd has a loopback-only CNI
    config, whose result containerd 1.6 rejects: "failed to find network info");
    `pb.POD` gives the pod a CNI network (cri_net_e2e.py). `cgroup_parent` is the pod's
    cgroup, as kubelet sends it."""
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=name,
        log_directory=os.path.join(LOG_DIR, name),
        annotations=annotations,
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=network)
            ),
        ),
    )
    os.makedirs(cfg.log_directory, exist_ok=True)
    resp = rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=cfg, runtime_handler=HANDLER), timeout=BOOT_TIMEOUT
    )
    return resp.pod_sandbox_id, cfg


def start_container(pod_id, pod_cfg, name, command):
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=IMAGE),
        command=command,
        log_path=f"{name}.log",
    )
    cid = rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_cfg),
        timeout=BOOT_TIMEOUT,
    ).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=BOOT_TIMEOUT)
    return cid, os.path.join(pod_cfg.log_directory, f"{name}.log")


def log_lines(path):
    """The container's output lines from a CRI log file (`TIME STREAM TAG TEXT`)."""
    try:
        with open(path) as f:
            return [l.rstrip("\n").split(" ", 3)[3] for l in f if l.count(" ") >= 3]
    except FileNotFoundError:
        return []


def wait_lines(path, n, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = log_lines(path)
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{path}: wanted {n} lines, got {log_lines(path)}")


def wait_exited(cid, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
        if st.state == pb.CONTAINER_EXITED:
            return st
        time.sleep(0.1)
    raise AssertionError(f"container {cid} did not exit")


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def pod_processes(pod_id):
    """Pids of the pod's host processes by kind: its shim (its -id is the pod id), VMM and
    virtiofsd (their command lines name the pod's state directory, named after the pod
    id's first 24 chars; virtiofsd is two processes, its sandbox forks)."""
    state = os.path.join(VM_ROOT, "k8s.io", pod_id[:24]) + "/"
    found = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if not args:
            continue
        exe = os.path.basename(args[0])
        if exe == "containerd-shim-sandbox-vm-v2" and pod_id in args:
            found.setdefault("shim", []).append(int(p))
        elif any(state in a for a in args):
            found.setdefault("virtiofsd" if "virtiofsd" in exe else "vmm", []).append(int(p))
    return found


def pss_by_kind(procs):
    return {k: sum(pss_kib(p) for p in pids) for k, pids in procs.items()}


def boot_id(lines):
    ids = [l for l in lines if len(l) == 36 and l.count("-") == 4]
    assert ids, f"no boot_id in {lines}"
    return ids[0]


def mem_total_kib(cid):
    r = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["head", "-1", "/proc/meminfo"], timeout=300), timeout=600)
    return int(r.stdout.decode().split()[1])


# cgroup v1 hierarchies kubelet's pod cgroup is made in here (it makes it in every one;
# these are those that account for a pod's cost, the ones the shim places the pod in).
V1_CONTROLLERS = ["memory", "cpu", "cpuacct", "pids", "blkio"]


def cgroup_roots():
    """The cgroup hierarchies' roots: v2's one, or v1's accounting controllers (also in
    systemd's hybrid mode, whose cgroup2 mount has no controllers)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return {"": "/sys/fs/cgroup"}
    roots = {}
    for c in V1_CONTROLLERS:
        real = os.path.realpath(f"/sys/fs/cgroup/{c}")
        if os.path.isfile(os.path.join(real, "cgroup.procs")) and real not in roots.values():
            roots[os.path.basename(real)] = real
    return roots


def make_kubelet_pod_cgroup(parent):
    """What kubelet does before RunPodSandbox: the pod's cgroup in every hierarchy."""
    for root in cgroup_roots().values():
        os.makedirs(os.path.join(root, parent.lstrip("/")), exist_ok=True)


def remove_cgroup_tree(top):
    for root in cgroup_roots().values():
        d = os.path.join(root, top.lstrip("/"))
        for dirpath, _, _ in sorted(os.walk(d), key=lambda w: -w[0].count("/")):
            os.rmdir(dirpath)


def proc_cgroups(pid):
    """/proc/PID/cgroup as {hierarchy name (v1: its controllers, as its mount's name; v2: ""): path}."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            out[",".join(sorted(ctrls.split(","))) if ctrls else ""] = path
    return out


def in_pod_cgroup(pid, pod_cgroup):
    """Whether `pid` is inside `pod_cgroup` in every accounting hierarchy."""
    cg = proc_cgroups(pid)
    names = {",".join(sorted(n.split(","))) for n in cgroup_roots()}
    return all(cg.get(n, "").startswith(pod_cgroup + "/") for n in names), cg


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_ns(pid):
    """User + system CPU time of `pid` (ns)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def check_kubelet_pod(pod, c, parent, m):
    """The pod's host processes run in its cgroup (the sandbox container's, below the
    cgroup parent) and PodSandboxStats/ContainerStats report them."""
    procs = pod_processes(pod)
    assert set(procs) == {"shim", "vmm", "virtiofsd"}, f"kubelet-style pod processes: {procs}"
    pod_cgroup = f"{parent}/{pod}"
    for kind, pids in procs.items():
        for pid in pids:
            ok, cg = in_pod_cgroup(pid, pod_cgroup)
            assert ok, f"{kind} {pid} is not in {pod_cgroup}: {cg}"
    vmm = procs["vmm"]
    guest_ram_kib = sum(proc_status_kib(p, "RssShmem") for p in vmm)
    vmm_cpu = sum(cpu_ns(p) for p in vmm)
    s = rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod), timeout=60).stats
    mem, cpu = s.linux.memory, s.linux.cpu
    log(f"PodSandboxStats: memory usage {mem.usage_bytes.value} working set {mem.working_set_bytes.value}, "
        f"cpu {cpu.usage_core_nano_seconds.value} ns; VMM guest RAM {guest_ram_kib} KiB, cpu {vmm_cpu} ns")
    # The VMM's guest RAM (memfd pages, charged where they were touched) and its CPU time
    # (all of it: it ran in the pod's cgroup from exec) are in the pod's numbers.
    assert guest_ram_kib > 1024, f"the VMM holds {guest_ram_kib} KiB of guest RAM"
    assert mem.usage_bytes.value >= guest_ram_kib * 1024, f"pod memory {mem}"
    assert mem.working_set_bytes.value > 0, f"pod memory {mem}"
    assert cpu.usage_core_nano_seconds.value >= vmm_cpu * 9 // 10, f"pod cpu {cpu} < VMM's {vmm_cpu}"
    assert [x.attributes.id for x in s.linux.containers] == [c], f"containers: {s.linux.containers}"
    cs = rt.ContainerStats(pb.ContainerStatsRequest(container_id=c), timeout=60).stats
    log(f"ContainerStats: memory working set {cs.memory.working_set_bytes.value}, cpu {cs.cpu.usage_core_nano_seconds.value} ns")
    assert cs.memory.working_set_bytes.value > 0, f"container memory {cs.memory}"
    assert cs.cpu.usage_core_nano_seconds.value > 0, f"container cpu {cs.cpu}"
    m["pod2_stats"] = {
        "pod_memory_usage_bytes": mem.usage_bytes.value,
        "pod_cpu_ns": cpu.usage_core_nano_seconds.value,
        "vmm_guest_ram_kib": guest_ram_kib,
        "container_working_set_bytes": cs.memory.working_set_bytes.value,
    }
    return pod_cgroup


def main():
    with open("/proc/sys/kernel/random/boot_id") as f:
        host_boot = f.read().strip()
    m = {}

    # Pod 1: its first container's first output, timed from RunPodSandbox.
    t0 = time.time()
    pod1, cfg1 = run_pod("pod1", {"io.sandbox-vm.mem-mib": "192"})
    m["run_pod_sandbox_s"] = round(time.time() - t0, 2)
    log(f"pod1 {pod1[:12]} ready after {m['run_pod_sandbox_s']} s")
    c1, log1 = start_container(
        pod1, cfg1, "c1", ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; echo c1-ready; sleep 100000"]
    )
    lines1 = wait_lines(log1, 1)
    m["pod_to_first_output_s"] = round(time.time() - t0, 2)
    log(f"pod1/c1 first output after {m['pod_to_first_output_s']} s: {lines1}")
    boot1 = boot_id(wait_lines(log1, 2))
    assert boot1 != host_boot, "pod1 sees the host's boot_id"

    procs = pod_processes(pod1)
    assert set(procs) == {"shim", "vmm", "virtiofsd"}, f"pod1 processes: {procs}"
    m["pod1_pss_kib"] = pss_by_kind(procs)
    m["pod1_pss_total_kib"] = sum(m["pod1_pss_kib"].values())

    # A second container in the same pod: same kernel, and its exit code.
    t1 = time.time()
    c2, log2 = start_container(pod1, cfg1, "c2", ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; exit 3"])
    lines2 = wait_lines(log2, 1)
    m["second_container_to_output_s"] = round(time.time() - t1, 2)
    assert boot_id(lines2) == boot1, f"c2 runs in another kernel: {lines2} vs {boot1}"
    st2 = wait_exited(c2)
    assert st2.exit_code == 3, f"c2 exit code {st2.exit_code}"
    procs_after = pod_processes(pod1)
    m["pod1_pss_total_after_second_container_kib"] = sum(pss_by_kind(procs_after).values())

    # ExecSync in c1, and the pod annotation that sized the VM reached it.
    r = rt.ExecSync(pb.ExecSyncRequest(container_id=c1, cmd=["sh", "-c", "echo exec-ok; exit 4"], timeout=300), timeout=600)
    assert r.stdout.decode().strip() == "exec-ok" and r.exit_code == 4, f"ExecSync: {r}"
    mem1 = mem_total_kib(c1)
    assert mem1 > 150 * 1024, f"pod1 asked for 192 MiB, its guest has MemTotal {mem1} kB"

    # Pod 2: another VM, requested as kubelet does (a cgroup parent: kubelet's pod cgroup,
    # made first as kubelet would).
    kube_top = f"/svm-e2e-kubepods-{os.getpid()}"
    parent = f"{kube_top}/burstable/poduid-pod2"
    make_kubelet_pod_cgroup(parent)
    t2 = time.time()
    pod2, cfg2 = run_pod("pod2", {}, cgroup_parent=parent)
    c3, log3 = start_container(pod2, cfg2, "c3", ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; sleep 100000"])
    boot2 = boot_id(wait_lines(log3, 1))
    m["second_pod_to_output_s"] = round(time.time() - t2, 2)
    assert boot2 not in (boot1, host_boot), "pod2 shares a kernel with pod1 or the host"
    mem2 = mem_total_kib(c3)
    assert mem2 < mem1, f"pod2 (default size) has MemTotal {mem2} kB, pod1 {mem1} kB"
    pod2_cgroup = check_kubelet_pod(pod2, c3, parent, m)
    procs2 = pod_processes(pod2)
    m["pod2_pss_kib"] = pss_by_kind(procs2)
    m["pod2_pss_total_kib"] = sum(m["pod2_pss_kib"].values())
    m["second_pod_pss_added_kib"] = m["pod2_pss_total_kib"]
    m["second_container_pss_added_kib"] = (
        m["pod1_pss_total_after_second_container_kib"] - m["pod1_pss_total_kib"]
    )

    # StopContainer needs the shim's exit event (it would hang without it).
    t3 = time.time()
    rt.StopContainer(pb.StopContainerRequest(container_id=c1, timeout=2), timeout=600)
    st1 = wait_exited(c1)
    m["stop_container_s"] = round(time.time() - t3, 2)
    # SIGTERM (143), or SIGKILL after the grace period (137) if the shell ignored it.
    assert st1.exit_code in (137, 143), f"c1 stopped: exit code {st1.exit_code}"
    assert "c1-ready" in log_lines(log1), f"c1 log: {log_lines(log1)}"

    for pod in (pod1, pod2):
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=600)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=600)
    left = rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not left, f"pods left: {left}"
    # The sandbox container's cgroup (ours) is gone; kubelet's pod cgroup is not.
    for root in cgroup_roots().values():
        assert not os.path.exists(root + pod2_cgroup), f"left: {root + pod2_cgroup}"
        assert os.path.isdir(root + parent), f"kubelet's {root + parent} was removed"
    remove_cgroup_tree(kube_top)
    print("MEASUREMENTS " + json.dumps(m), flush=True)


if __name__ == "__main__":
    connect(*sys.argv[1:5])
    main()
