"""CRI pods across a containerd restart and a shim crash, in phases (the Rust test
e2e_restart restarts containerd and kills the shim between them). Every failed check
raises; each phase prints one `RESULT {json}` line.

usage: cri_restart_e2e.py CONTAINERD_SOCK LOG_DIR VM_ROOT IMAGE PHASE [ARGS...]
  start CGROUP_PARENT     two pods (two VMs): "survivor" with a container printing a line every 5 s, and
                          "victim" (kubelet-style, in CGROUP_PARENT) with one too
  after-restart POD CTR   the survivor, after containerd restarted: Ready, ExecSync, its log, a
                          container killed by its memory limit is OOMKilled, StopContainer,
                          StopPodSandbox + RemovePodSandbox
  after-crash POD PARENT  the victim, after its shim was SIGKILLed: not ready, then
                          StopPodSandbox + RemovePodSandbox leave no cgroup of it below PARENT
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cri_e2e as cri
from cri_api.v1 import api_pb2 as pb

# The hog asks for one 32 MiB buffer and fills it, past its 16 MiB limit: the guest kernel
# kills it within seconds. (A shell string doubled in a loop took over 10 min here: each
# step's page faults and reclaim are emulated guest kernel work.) Both sizes are well inside
# a default pod VM's room for containers.
HOG_LIMIT = 16 * 1024 * 1024
HOG = ["dd", "if=/dev/zero", "of=/dev/null", "bs=32M", "count=1"]


def log(msg):
    print(f"[cri-restart-e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def result(d):
    print("RESULT " + json.dumps(d), flush=True)


def pod_state(pod):
    return cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.state


def remove_pod(pod):
    t = time.time()
    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=600)
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=600)
    return round(time.time() - t, 2)


def run_sleeper(name, parent="", tick=False):
    """A pod with one sleeping container (printing a line every 5 s with `tick`);
    (pod, container) once it wrote its first."""
    pod, cfg = cri.run_pod(name, {}, cgroup_parent=parent)
    rest = "while sleep 5; do echo tick; done" if tick else "sleep 100000"
    ctr, log_path = cri.start_container(pod, cfg, "main", ["sh", "-c", f"echo {name}-ready; {rest}"])
    cri.wait_lines(log_path, 1)
    return pod, ctr


def start(parent):
    t = time.time()
    cri.make_kubelet_pod_cgroup(parent)
    # Both VMs start at once: the phase takes one boot's time, not two.
    with ThreadPoolExecutor(2) as ex:
        a = ex.submit(run_sleeper, "survivor", "", True)
        b = ex.submit(run_sleeper, "victim", parent)
        (survivor, ctr), (victim, vctr) = a.result(), b.result()
    log(f"survivor {survivor[:12]} and victim {victim[:12]} running after {time.time() - t:.1f} s")
    result({"survivor": survivor, "survivor_ctr": ctr, "victim": victim, "victim_ctr": vctr,
            "start_s": round(time.time() - t, 2)})


def wait_ready(pod, timeout=120):
    deadline = time.time() + timeout
    while True:
        try:
            if pod_state(pod) == pb.SANDBOX_READY:
                return
        except Exception as e:  # the CRI plugin may still be recovering
            if time.time() > deadline:
                raise
            log(f"PodSandboxStatus: {e}")
        assert time.time() < deadline, f"pod {pod[:12]} is not ready after the restart"
        time.sleep(0.5)


def oom_killed_container(pod, cfg_name):
    """A container whose memory limit the guest enforces: it must be reported OOMKilled."""
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=cfg_name, uid=f"uid-{cfg_name}", namespace="default"),
        log_directory=os.path.join(cri.LOG_DIR, cfg_name),
    )
    ccfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="hog"),
        image=pb.ImageSpec(image=cri.IMAGE),
        command=HOG,
        log_path="hog.log",
        linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(memory_limit_in_bytes=HOG_LIMIT)),
    )
    t = time.time()
    hog = cri.rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg), timeout=600
    ).container_id
    cri.rt.StartContainer(pb.StartContainerRequest(container_id=hog), timeout=600)
    st = cri.wait_exited(hog, timeout=600)
    log(f"hog exited after {time.time() - t:.1f} s: code {st.exit_code}, reason {st.reason!r}")
    assert st.exit_code == 137, f"the hog was not killed: {st}"
    assert st.reason == "OOMKilled", f"the hog's reason is {st.reason!r}, not OOMKilled"
    return hog, round(time.time() - t, 2)


def after_restart(pod, ctr):
    m = {}
    wait_ready(pod)
    t = time.time()
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=ctr, cmd=["sh", "-c", "echo exec-ok; exit 5"], timeout=300),
                        timeout=600)
    assert r.stdout.decode().strip() == "exec-ok" and r.exit_code == 5, f"ExecSync: {r}"
    m["exec_sync_s"] = round(time.time() - t, 2)
    # The container's log still reaches the CRI log file: the new containerd reopened the
    # shim's stdio FIFOs. The container prints a line every 5 s.
    t = time.time()
    log_path = cri.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=ctr)).status.log_path
    seen = len(cri.log_lines(log_path))
    lines = cri.wait_lines(log_path, seen + 1, timeout=120)
    assert lines[-1] == "tick", f"the container's log after the restart: {lines}"
    m["log_s"] = round(time.time() - t, 2)
    m["hog"], m["oom_s"] = oom_killed_container(pod, "survivor")
    # StopContainer waits for the exit event: it hangs if events no longer arrive.
    t = time.time()
    cri.rt.StopContainer(pb.StopContainerRequest(container_id=ctr, timeout=2), timeout=120)
    st = cri.wait_exited(ctr, timeout=60)
    assert st.exit_code in (137, 143), f"main stopped: {st}"
    m["stop_container_s"] = round(time.time() - t, 2)
    m["remove_pod_s"] = remove_pod(pod)
    result(m)


def after_crash(pod, parent):
    t = time.time()
    while pod_state(pod) == pb.SANDBOX_READY:
        assert time.time() - t < 120, f"pod {pod[:12]} is still ready after its shim was killed"
        time.sleep(0.2)
    m = {"not_ready_s": round(time.time() - t, 2)}
    m["remove_pod_s"] = remove_pod(pod)
    left = [p.id for p in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items]
    assert not left, f"pods left: {left}"
    for root in cri.cgroup_roots().values():
        d = root + f"{parent}/{pod}"
        assert not os.path.exists(d), f"the crashed pod's cgroup is left: {d}"
    cri.remove_cgroup_tree("/" + parent.lstrip("/").split("/")[0])
    result(m)


def main():
    cri.connect(*sys.argv[1:5])
    phase, args = sys.argv[5], sys.argv[6:]
    {"start": start, "after-restart": after_restart, "after-crash": after_crash}[phase](*args)


if __name__ == "__main__":
    main()
