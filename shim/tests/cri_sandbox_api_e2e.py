"""CRI through containerd 2.x's Sandbox API (`sandboxer = "shim"`): the CRI client of
cri_e2e.py drives a containerd 2.1 that runs inside a network namespace the Rust test made.
One pod on the CNI bridge (one VM, no pause container), one container in the pod's PID
namespace: it gets the IP CRI reports, containerd created it through the sandbox's shim
connection (bootstrap version 3: its bundle says so), ExecSync works, and no process in the
guest is a pause container (CRI's sandbox image here runs `sleep 2147483647`), and the
container's /etc/resolv.conf and /etc/hostname are the pod's (its DNS config and hostname,
which CRI leaves to the runtime in this mode). Then
StopPodSandbox and RemovePodSandbox. Every failed check raises. Prints one `RESULT {json}`
line (timings, `pod_netns`: the pod's netns path, which must be gone, and `pod_id`).

usage: cri_sandbox_api_e2e.py CONTAINERD_SOCK LOG_DIR VM_ROOT IMAGE CONTAINERD_STATE GATEWAY
"""

import ipaddress
import json
import os
import sys
import time

import cri_e2e as cri
from cri_api.v1 import api_pb2 as pb
from cri_net_e2e import guest_inet, remove_all_pods, wait_for_line

NETNS_DIR = "/var/run/netns"
# The pod's DNS config: the shim writes it as the containers' /etc/resolv.conf.
DNS_SERVER, DNS_SEARCH = "10.231.13.53", "svc.sbapi.test"


def log(msg):
    print(f"[cri-sandbox-api-e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_pod_sharing_pids(name):
    """RunPodSandbox on the pod network, the pod's containers in one PID namespace."""
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=name,
        log_directory=os.path.join(cri.LOG_DIR, name),
        dns_config=pb.DNSConfig(servers=[DNS_SERVER], searches=[DNS_SEARCH], options=["ndots:3"]),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.POD)
            ),
        ),
    )
    os.makedirs(cfg.log_directory, exist_ok=True)
    resp = cri.rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=cfg, runtime_handler=cri.HANDLER), timeout=cri.BOOT_TIMEOUT
    )
    return resp.pod_sandbox_id, cfg


def main():
    sock, log_dir, vm_root, image, state, gateway = sys.argv[1:7]
    cri.connect(sock, log_dir, vm_root, image)
    try:
        run(state, gateway)
    except BaseException:
        try:
            remove_all_pods()
        except Exception as e:
            log(f"cleaning up after the failure: {e!r}")
        raise


def run(state, gateway):
    m = {}
    before = set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()
    t0 = time.time()
    pod, cfg = run_pod_sharing_pids("sbapi")
    m["run_pod_sandbox_s"] = round(time.time() - t0, 2)
    st = cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod)).status
    assert st.state == pb.SANDBOX_READY, f"the pod is not ready: {st}"
    ip = st.network.ip
    made = [n for n in os.listdir(NETNS_DIR) if n not in before and n.startswith("cni-")]
    assert len(made) == 1, f"CRI made netns {made}"
    netns = os.path.join(NETNS_DIR, made[0])
    log(f"pod {pod[:12]} ready after {m['run_pod_sandbox_s']} s, CRI says IP {ip}")
    net = ipaddress.ip_network(f"{gateway}/24", strict=False)
    assert ipaddress.ip_address(ip) in net, f"the pod's IP {ip} is not in the CNI subnet {net}"

    script = "busybox ip -o -4 addr show eth0; echo app-ready; exec sleep 100000"
    cid, log_path = cri.start_container(pod, cfg, "app", ["sh", "-c", script])
    lines = wait_for_line(log_path, "app-ready")
    m["pod_to_container_s"] = round(time.time() - t0, 2)
    assert guest_inet(lines) == f"{ip}/24", f"the guest has {guest_inet(lines)}, CRI says {ip}"

    # containerd joined the container to the sandbox's shim connection (bootstrap v3)
    # instead of running the shim's `start` for it.
    bundle = os.path.join(state, "io.containerd.runtime.v2.task", "k8s.io", cid)
    with open(os.path.join(bundle, "bootstrap.json")) as f:
        boot = json.load(f)
    assert boot.get("version") == 3 and boot.get("protocol") == "ttrpc", f"bootstrap.json: {boot}"
    with open(os.path.join(bundle, "sandbox")) as f:
        assert f.read().strip() == pod, "the container's bundle names another sandbox"

    t1 = time.time()
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["ps", "-o", "pid,args"], timeout=600),
                        timeout=900)
    m["exec_sync_s"] = round(time.time() - t1, 2)
    out = r.stdout.decode()
    log(f"ExecSync ps (exit {r.exit_code}):\n{out}")
    assert r.exit_code == 0, f"ExecSync: {r}"
    assert "sleep 100000" in out, f"the container's own process is not listed: {out}"
    assert "2147483647" not in out and "/pause" not in out, f"a pause container runs in the guest: {out}"

    # The pod's files, which CRI leaves to the runtime in this mode.
    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["cat", "/etc/resolv.conf", "/etc/hostname"],
                                           timeout=600), timeout=900)
    files = r.stdout.decode()
    want = f"search {DNS_SEARCH}\nnameserver {DNS_SERVER}\noptions ndots:3\nsbapi\n"
    assert r.exit_code == 0 and files == want, f"the container's resolv.conf and hostname: {files!r} ({r})"

    cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=600)
    cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=600)
    left = cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not left, f"pods left: {left}"
    m["total_s"] = round(time.time() - t0, 2)
    m["pod_netns"], m["pod_id"], m["ip"] = netns, pod, ip
    print("RESULT " + json.dumps(m), flush=True)


if __name__ == "__main__":
    main()
