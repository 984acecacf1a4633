"""CRI pods with a CNI network (bridge + host-local): the CRI client of cri_e2e.py drives a
containerd that runs inside a network namespace the Rust test made, so the bridge, the
pods' subnet and all their traffic stay in it. Two pods (two VM boots), one container
each: "web" serves a page with busybox httpd, "client" fetches it and pings "web" by the
IP CRI reports; "web" pings "client" back through ExecSync; the node (the test's netns)
fetches the page too. Every failed check raises. Prints one `RESULT {json}` line
(timings, the pods' IPs, `pod_netns`: their netns paths, which must be gone, and `pod_ids`).

usage: cri_net_e2e.py CONTAINERD_SOCK LOG_DIR VM_ROOT IMAGE NETNS_PATH GATEWAY
"""

import ipaddress
import json
import subprocess
import sys
import time

import cri_e2e as cri
from cri_api.v1 import api_pb2 as pb

PAGE = "hello-from-the-web-pod"


def log(msg):
    print(f"[cri-net-e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pod_ip_and_netns(pod_id):
    """The pod's IP and its netns path, from PodSandboxStatus (verbose: containerd's info)."""
    r = cri.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    st = r.status
    assert st.state == pb.SANDBOX_READY, f"pod {pod_id[:12]} is not ready: {st}"
    spec = json.loads(r.info["info"])["runtimeSpec"]
    netns = [n.get("path") for n in spec["linux"]["namespaces"] if n["type"] == "network"]
    assert netns and netns[0], f"pod {pod_id[:12]} has no netns: {spec['linux']['namespaces']}"
    return st.network.ip, netns[0]


def wait_for_line(path, want, timeout=900):
    """The container's log lines once one of them starts with `want`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = cri.log_lines(path)
        if any(l.startswith(want) for l in lines):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"{path}: no line {want!r} in {cri.log_lines(path)}")


def guest_inet(lines):
    """The address of `ip -o -4 addr show eth0` in a container's output (`a.b.c.d/len`)."""
    for l in lines:
        f = l.split()
        if len(f) > 3 and f[1] == "eth0" and f[2] == "inet":
            return f[3]
    raise AssertionError(f"no eth0 address in {lines}")


def node_fetch(netns, url, timeout=300):
    """GET `url` from the node, i.e. from inside the test's netns (the bridge's side)."""
    deadline = time.time() + timeout
    while True:
        r = subprocess.run(["nsenter", f"--net={netns}", "curl", "-sf", "-m", "10", url],
                           capture_output=True, text=True)
        if r.returncode == 0 or time.time() > deadline:
            return r
        time.sleep(1)


def remove_all_pods():
    """StopPodSandbox + RemovePodSandbox of every pod (CNI teardown included)."""
    for p in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=600)
        cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=600)


def main():
    sock, log_dir, vm_root, image, netns, gateway = sys.argv[1:7]
    cri.connect(sock, log_dir, vm_root, image)
    try:
        run(netns, gateway)
    except BaseException:
        # Leave no pod netns or CNI state behind on failure either (containerd is stopped
        # after this script and would leave them).
        try:
            remove_all_pods()
        except Exception as e:
            log(f"cleaning up after the failure: {e!r}")
        raise


def run(netns, gateway):
    m = {}

    t0 = time.time()
    web, web_cfg = cri.run_pod("web", {}, network=pb.POD)
    m["web_run_pod_sandbox_s"] = round(time.time() - t0, 2)
    web_ip, web_netns = pod_ip_and_netns(web)
    log(f"pod web {web[:12]} ready after {m['web_run_pod_sandbox_s']} s, CRI says IP {web_ip}")
    net = ipaddress.ip_network(f"{gateway}/24", strict=False)
    assert ipaddress.ip_address(web_ip) in net, f"web's IP {web_ip} is not in the CNI subnet {net}"

    serve = (f"busybox ip -o -4 addr show eth0; busybox ip route; mkdir -p /tmp/www; "
             f"echo {PAGE} > /tmp/www/index.html; echo web-ready; exec busybox httpd -f -p 80 -h /tmp/www")
    c_web, log_web = cri.start_container(web, web_cfg, "httpd", ["sh", "-c", serve])
    lines = wait_for_line(log_web, "web-ready")
    m["web_to_httpd_s"] = round(time.time() - t0, 2)
    log(f"web: {lines}")
    assert guest_inet(lines) == f"{web_ip}/24", f"the guest has {guest_inet(lines)}, CRI says {web_ip}"
    default = f"default via {gateway} dev eth0"
    assert any(l.startswith(default) for l in lines), f"web's routes: {lines}"

    r = node_fetch(netns, f"http://{web_ip}/index.html")
    assert r.returncode == 0 and r.stdout.strip() == PAGE, f"node -> web: {r}"
    log("the node fetched web's page")

    t1 = time.time()
    client, client_cfg = cri.run_pod("client", {}, network=pb.POD)
    client_ip, client_netns = pod_ip_and_netns(client)
    assert client_ip != web_ip and ipaddress.ip_address(client_ip) in net, f"client's IP {client_ip}"
    # (No `wget -T`: Debian 12's busybox 1.35 wget crashes with it.)
    fetch = (f"busybox ip -o -4 addr show eth0; busybox wget -q -O - http://{web_ip}/index.html; "
             f"echo fetched=$?; busybox ping -c 3 -W 30 {web_ip}; echo pinged=$?; sleep 100000")
    c_client, log_client = cri.start_container(client, client_cfg, "wget", ["sh", "-c", fetch])
    lines = wait_for_line(log_client, "pinged=")
    m["client_pod_to_fetch_and_ping_s"] = round(time.time() - t1, 2)
    log(f"client: {lines}")
    assert guest_inet(lines) == f"{client_ip}/24", f"the guest has {guest_inet(lines)}, CRI says {client_ip}"
    assert PAGE in lines and "fetched=0" in lines, f"client -> web (HTTP): {lines}"
    assert "pinged=0" in lines, f"client -> web (ping): {lines}"

    r = cri.rt.ExecSync(pb.ExecSyncRequest(container_id=c_web, cmd=["busybox", "ping", "-c", "2", "-W", "30", client_ip],
                                           timeout=600), timeout=900)
    assert r.exit_code == 0, f"web -> client (ping): {r}"
    log("web pinged client")

    for pod in (client, web):
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=600)
        cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=600)
    left = cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not left, f"pods left: {left}"
    m["web_ip"], m["client_ip"] = web_ip, client_ip
    m["pod_netns"] = [web_netns, client_netns]
    m["pod_ids"] = [web, client]
    print("RESULT " + json.dumps(m), flush=True)


if __name__ == "__main__":
    main()
