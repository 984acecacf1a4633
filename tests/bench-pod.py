#!/usr/bin/env python3
"""Kubernetes pods on sandbox-vm as containerd's CRI runs them, on a bridge CNI network:
warm (restored from a template) against cold (booted), in the same run. A containerd of
the bench's own runs inside a network namespace of its own (bridge, pods' subnet and all
their traffic stay in it) with this build's release shim; a real CRI client drives it.

Measured, each --runs times (modes interleaved; medians printed side by side):
  start   RunPodSandbox -> the first output line of the pod's container, template vs
          cold (`io.sandbox-vm.template: off`).
  update  UpdateContainerResources of a running container's memory limit and CPU quota:
          until it answers (the agent has written them), and until an ExecSync in the
          container reads them back from its cgroup (that includes an exec's cost). Growing the
          VM itself is not in this build: an update past the VM's size is refused.
  memory  host PSS per idle pod (shim + VMM + virtiofsd; guest RAM the guest touched is
          in the VMM's PSS) with --pods pods up at once, from the template vs cold.
  exec    an exec of busybox in a running container, first vs second: the exec'd
          process's own major faults (field 12 of /proc/self/stat) and ExecSync's time.

Pods have the default size, that of the network template it builds first
(`sandbox-vm template --network`; a hit when tests/run.sh already made it).

usage: tests/bench-pod.py [--runs N] [--pods N] [--only start,update,memory,exec]
       (root, after scripts/setup.sh: release binaries in target/release, the guest
       artifacts in the environment it prints; SANDBOX_VM_TEMPLATE_DIR as tests/run.sh
       sets it)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "shim", "tests"))

NETNS = "svm-bench-pod"
BRIDGE = "svmbench0"
GATEWAY = "10.231.13.1"
SUBNET = "10.231.13.0/24"
BUSYBOX = "localhost/busybox:1"
PAUSE = "localhost/pause:1"
CRI_API = "container-runtime-interface-api==2.0.1"
UPDATE = (50000, 100000, 24)  # CPU quota and period (µs), memory limit (MiB): within
# a default pod VM (128 MiB, of which 96 are guest overhead)


def log(msg):
    print(f"[bench-pod {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def venv_python():
    """target/cri-venv with the CRI client (the CRI e2e tests make the same one)."""
    venv = os.path.join(ROOT, "target", "cri-venv")
    py = os.path.join(venv, "bin", "python")
    probe = [py, "-c", "import cri_api.v1.api_pb2_grpc, grpc"]
    if not (os.path.exists(py) and subprocess.run(probe, capture_output=True).returncode == 0):
        sh(sys.executable, "-m", "venv", venv)
        sh(os.path.join(venv, "bin", "pip"), "install", "-q", CRI_API)
    return py


def build_images(d):
    """A docker-archive tar: BUSYBOX (`sh`) and PAUSE (sleeps) on one busybox layer."""
    rootfs = os.path.join(d, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    for sub in ["proc", "sys", "dev", "tmp", "etc"]:
        os.makedirs(os.path.join(rootfs, sub))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
    for a in ["sh", "cat", "echo", "sleep", "head", "true", "cut"]:
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    sh("tar", "--numeric-owner", "--owner=0", "--group=0", "-C", rootfs, "-cf",
       os.path.join(d, "layer.tar"), ".")
    digest = lambda f: subprocess.run(["sha256sum", f], capture_output=True, text=True,
                                      check=True).stdout.split()[0]
    layer = digest(os.path.join(d, "layer.tar"))
    manifest = []
    for name, cmd in [(BUSYBOX, ["sh"]), (PAUSE, ["sleep", "2147483647"])]:
        cfg = {"architecture": "amd64", "os": "linux",
               "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
               "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]}}
        tmp = os.path.join(d, "config.tmp")
        with open(tmp, "w") as f:
            json.dump(cfg, f)
        name_json = digest(tmp) + ".json"
        os.rename(tmp, os.path.join(d, name_json))
        manifest.append({"Config": name_json, "RepoTags": [name], "Layers": ["layer.tar"]})
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    files = ["manifest.json", "layer.tar"] + [m["Config"] for m in manifest]
    sh("tar", "-C", d, "-cf", os.path.join(d, "images.tar"), *files)
    return os.path.join(d, "images.tar")


CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.sandbox-vm]
      runtime_type = "io.containerd.sandbox-vm.v2"
      pod_annotations = ["io.sandbox-vm.*"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"""


class Containerd:
    """containerd with its own root, state and socket, inside the bench's netns."""

    def __init__(self, d):
        self.dir = d
        self.sock = os.path.join(d, "containerd.sock")
        self.vm_root = os.path.join(d, "vms")
        for sub in ["bin", "cni", "vms", "logs"]:
            os.makedirs(os.path.join(d, sub))
        rel = os.path.join(ROOT, "target", "release")
        os.symlink(os.path.join(rel, "containerd-shim-sandbox-vm-v2"),
                   os.path.join(d, "bin", "containerd-shim-sandbox-vm-v2"))
        conflist = {"cniVersion": "0.4.0", "name": "svm-bench", "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": os.path.join(d, "ipam")}}]}
        with open(os.path.join(d, "cni", "10-bench.conflist"), "w") as f:
            json.dump(conflist, f)
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(CONFIG.format(d=d, pause=PAUSE))
        env = dict(os.environ, PATH=f"{d}/bin:{os.environ.get('PATH', '')}",
                   SANDBOX_VM_SHIM_ROOT=self.vm_root,
                   SANDBOX_VM_VMM=os.path.join(rel, "sandbox-vm-vmm"))
        self.log = open(os.path.join(d, "containerd.log"), "w")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NETNS}", "containerd", "--config",
             os.path.join(d, "config.toml")],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while self.ctr("version").returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"containerd did not come up; see {self.log.name}")
            time.sleep(0.2)

    def ctr(self, *args):
        return subprocess.run(["ctr", "--address", self.sock, "-n", "k8s.io", *args],
                              capture_output=True, text=True)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ensure_template(work):
    """The network template for a default-size pod (built unless it exists)."""
    b = os.path.join(work, "template-bundle")
    os.makedirs(os.path.join(b, "rootfs", "bin"))
    shutil.copy("/bin/busybox", os.path.join(b, "rootfs", "bin", "busybox"))
    cli = os.path.join(ROOT, "target", "release", "sandbox-vm")
    sh(cli, "spec", cwd=b)
    t0 = time.time()
    out = subprocess.run([cli, "template", "--bundle", b, "--network"], check=True,
                         capture_output=True, text=True).stdout.strip()
    log(f"network template {out} ready after {time.time() - t0:.1f} s")


def median(xs):
    return round(statistics.median(xs), 2) if xs else None


class Bench:
    def __init__(self, cri, pb, runs, pods):
        self.cri, self.pb, self.runs, self.pods = cri, pb, runs, pods
        self.n = 0

    def pod(self, template, extra=None, resources=None):
        """A pod on the CNI network with one container that prints a line and sleeps;
        returns (pod id, container id, seconds from RunPodSandbox to the first line)."""
        self.n += 1
        ann = dict(extra or {})
        if not template:
            ann["io.sandbox-vm.template"] = "off"
        t0 = time.time()
        pod, cfg = self.cri.run_pod(f"bench{self.n}", ann, network=self.pb.POD)
        cid, path = self.start(pod, cfg, resources)
        self.cri.wait_lines(path, 1, timeout=1800)
        return pod, cid, time.time() - t0

    def start(self, pod, cfg, resources):
        pb = self.pb
        linux = {"linux": pb.LinuxContainerConfig(resources=resources)} if resources else {}
        c = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=BUSYBOX),
            command=["sh", "-c", "echo up; exec sleep 100000"], log_path="main.log", **linux)
        cid = self.cri.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=c, sandbox_config=cfg), timeout=1800).container_id
        self.cri.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=1800)
        return cid, os.path.join(cfg.log_directory, "main.log")

    def remove(self, pod):
        pb = self.pb
        self.cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=600)
        self.cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=600)

    def exec(self, cid, cmd):
        pb = self.pb
        t0 = time.time()
        r = self.cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=600),
                                 timeout=900)
        assert r.exit_code == 0, f"exec {cmd}: {r}"
        return r.stdout.decode(), time.time() - t0

    def start_times(self):
        t = {"template": [], "cold": []}
        for i in range(self.runs):
            for mode in ("template", "cold"):
                pod, _, s = self.pod(mode == "template")
                log(f"start run {i + 1}/{self.runs}, {mode}: {s:.1f} s")
                t[mode].append(s)
                self.remove(pod)
        return {"template_s": t["template"], "cold_s": t["cold"],
                "median_template_s": median(t["template"]), "median_cold_s": median(t["cold"]),
                "cold_over_template": round(median(t["cold"]) / median(t["template"]), 2)}

    def update_times(self):
        pb = self.pb
        quota, period, mib = UPDATE
        want = pb.LinuxContainerResources(cpu_period=period, cpu_quota=quota,
                                          memory_limit_in_bytes=mib << 20)
        # The container's cgroup v2 files (the guest's hierarchy), from inside it.
        show = ("cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); "
                "cat $cg/memory.max; cut -d' ' -f1 $cg/cpu.max")
        times, answered = [], []
        for i in range(self.runs):
            pod, cid, _ = self.pod(True)
            t0 = time.time()
            self.cri.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
                container_id=cid, linux=want), timeout=600)
            # The agent writes the limits before it answers: in force from here on.
            answered.append(time.time() - t0)
            while True:
                out, _ = self.exec(cid, ["sh", "-c", show])
                if out.split() == [str(mib << 20), str(quota)]:
                    break
                assert time.time() - t0 < 600, f"the container's cgroup shows {out.split()}"
                time.sleep(0.2)
            times.append(time.time() - t0)
            log(f"update run {i + 1}/{self.runs}: answered in {answered[-1]:.1f} s, "
                f"read back in the guest after {times[-1]:.1f} s")
            self.remove(pod)
        return {"to": {"cpu_quota_us": quota, "cpu_period_us": period, "memory_mib": mib},
                "answered_s": [round(t, 2) for t in answered], "median_answered_s": median(answered),
                "read_back_s": [round(t, 2) for t in times], "median_read_back_s": median(times)}

    def pss_per_pod(self, template):
        pods = []
        try:
            for i in range(self.pods):
                pod, _, s = self.pod(template)
                pods.append(pod)
                log(f"memory, {'template' if template else 'cold'}: pod {i + 1}/{self.pods} up in {s:.1f} s")
            time.sleep(10)  # let them settle (idle)
            kinds = {}
            for pod in pods:
                procs = self.cri.pod_processes(pod)
                assert set(procs) >= {"shim", "vmm", "virtiofsd"}, f"pod {pod[:12]}: {procs}"
                for k, v in self.cri.pss_by_kind(procs).items():
                    kinds[k] = kinds.get(k, 0) + v
        finally:
            for pod in pods:
                self.remove(pod)
        per = {k: round(v / len(pods) / 1024, 1) for k, v in kinds.items()}
        return {"pods": len(pods), "per_pod_mib": per, "total_per_pod_mib": round(sum(per.values()), 1)}

    def exec_faults(self):
        first, second = [], []
        for i in range(self.runs):
            pod, cid, _ = self.pod(True)
            for into in (first, second):
                stat, _ = self.exec(cid, ["cat", "/proc/self/stat"])
                _, secs = self.exec(cid, ["true"])
                into.append({"majflt": int(stat.rsplit(")", 1)[1].split()[9]), "s": round(secs, 2)})
            log(f"exec run {i + 1}/{self.runs}: first {first[-1]}, second {second[-1]}")
            self.remove(pod)
        summary = lambda xs: {"median_majflt": median([x["majflt"] for x in xs]),
                              "median_s": median([x["s"] for x in xs])}
        return {"first": first, "second": second,
                "median_first": summary(first), "median_second": summary(second)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--only", default="start,update,memory,exec")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench-pod.py: run it as root")
    for b in ["containerd-shim-sandbox-vm-v2", "sandbox-vm-vmm", "sandbox-vm"]:
        if not os.access(os.path.join(ROOT, "target", "release", b), os.X_OK):
            raise SystemExit(f"bench-pod.py: target/release/{b} missing: run scripts/setup.sh")
    if "SANDBOX_VM_TEMPLATE_DIR" not in os.environ:
        raise SystemExit("bench-pod.py: export SANDBOX_VM_TEMPLATE_DIR (tests/run.sh's)")
    py = venv_python()
    venv = os.path.dirname(os.path.dirname(py))
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(py, [py, *sys.argv])

    import cri_e2e as cri
    from cri_api.v1 import api_pb2 as pb

    work = tempfile.mkdtemp(prefix="bench-pod-")
    sh("ip", "netns", "add", NETNS)
    ctd = bench = None
    try:
        sh("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        ctd = Containerd(work)
        r = ctd.ctr("image", "import", build_images(os.path.join(work, "image")))
        assert r.returncode == 0, f"ctr image import: {r.stderr}"
        ensure_template(work)
        cri.connect(ctd.sock, os.path.join(work, "logs"), ctd.vm_root, BUSYBOX)
        bench = Bench(cri, pb, args.runs, args.pods)
        results = {"runs": args.runs}
        only = args.only.split(",")
        if "start" in only:
            results["start"] = bench.start_times()
        if "update" in only:
            results["update"] = bench.update_times()
        if "exec" in only:
            results["exec"] = bench.exec_faults()
        if "memory" in only:
            results["memory"] = {"template": bench.pss_per_pod(True), "cold": bench.pss_per_pod(False)}
        print(json.dumps(results, indent=1))
    finally:
        if ctd:
            try:
                for p in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
                    bench.remove(p.id)
            except Exception as e:  # containerd may be gone; say so, go on cleaning
                log(f"cannot remove the pods left: {e!r}")
            ctd.stop()
        subprocess.run(["ip", "netns", "del", NETNS])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
