"""The CRI part of the containerd version matrix (e2e_versions.rs): one pod on a CNI bridge
(the network of cri_net_e2e.py: containerd in the Rust test's netns), two containers in
it that share the pod's one VM (same guest boot id, one shim), ExecSync in both (output,
the pod's IP on the guest's eth0, exit status), then StopPodSandbox + RemovePodSandbox.
Every failed check raises. Prints one `RESULT {json}` line (timings, `pod_netns`: the
pod's netns path, which must be gone, and `pod_ids`).

usage: cri_versions_e2e.py CONTAINERD_SOCK LOG_DIR VM_ROOT IMAGE GATEWAY
"""

import ipaddress
import json
import sys
import time

import cri_e2e as cri
import cri_net_e2e as net
from cri_api.v1 import api_pb2 as pb


def exec_sync(cid, cmd):
    return cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=600), timeout=900)


def main():
    sock, log_dir, vm_root, image, gateway = sys.argv[1:6]
    cri.connect(sock, log_dir, vm_root, image)
    try:
        run(gateway)
    except BaseException:
        try:
            net.remove_all_pods()
        except Exception as e:
            net.log(f"cleaning up after the failure: {e!r}")
        raise


def run(gateway):
    m = {}
    t0 = time.time()
    pod, cfg = cri.run_pod("matrix", {}, network=pb.POD)
    m["run_pod_sandbox_s"] = round(time.time() - t0, 2)
    ip, pod_netns = net.pod_ip_and_netns(pod)
    subnet = ipaddress.ip_network(f"{gateway}/24", strict=False)
    assert ipaddress.ip_address(ip) in subnet, f"the pod's IP {ip} is not in the CNI subnet {subnet}"

    boot_ids = []
    cids = []
    for name in ("one", "two"):
        script = f"cat /proc/sys/kernel/random/boot_id; echo {name}-ready; exec sleep 100000"
        cid, log_path = cri.start_container(pod, cfg, name, ["sh", "-c", script])
        lines = net.wait_for_line(log_path, f"{name}-ready")
        boot_ids.append(cri.boot_id(lines))
        cids.append(cid)
    m["two_containers_s"] = round(time.time() - t0, 2)
    assert boot_ids[0] == boot_ids[1], f"the containers run in different VMs: boot ids {boot_ids}"
    procs = cri.pod_processes(pod)
    assert len(procs.get("shim", [])) == 1, f"one shim serves the pod: {procs}"

    t1 = time.time()
    r = exec_sync(cids[0], ["sh", "-c", "uname -r; busybox ip -o -4 addr show eth0"])
    assert r.exit_code == 0, f"ExecSync in one: {r}"
    out = r.stdout.decode().splitlines()
    assert out and "sandbox-vm" in out[0], f"ExecSync in one: not the guest kernel: {out}"
    assert net.guest_inet(out) == f"{ip}/24", f"the guest has {net.guest_inet(out)}, CRI says {ip}"
    r = exec_sync(cids[1], ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; exit 7"])
    assert r.exit_code == 7, f"ExecSync in two: exit code {r.exit_code}"
    assert r.stdout.decode().strip() == boot_ids[0], f"ExecSync in two: {r.stdout!r}"
    m["two_exec_syncs_s"] = round(time.time() - t1, 2)

    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=600)
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=600)
    left = cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not left, f"pods left: {left}"
    m["pod_netns"] = [pod_netns]
    m["pod_ids"] = [pod]
    m["total_s"] = round(time.time() - t0, 2)
    print("RESULT " + json.dumps(m), flush=True)


if __name__ == "__main__":
    main()
