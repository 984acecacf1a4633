"""What the benchmark scripts share."""
import json
import os
import shutil
import subprocess


def busybox_bundle(d, sandbox_vm, args, applets, extra_dirs=(), annotations=None, mounts=()):
    """An OCI bundle in `d`: a rootfs of busybox-static with `applets` linked to it (and
    `extra_dirs` made), the `sandbox-vm spec` default config running `args` without a
    terminal, with `annotations` and `mounts` added. Returns `d`."""
    rootfs = os.path.join(d, "rootfs")
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc", *extra_dirs]:
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for a in applets:
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    subprocess.run([sandbox_vm, "spec"], cwd=d, check=True)
    path = os.path.join(d, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    if annotations:
        spec.setdefault("annotations", {}).update(annotations)
    spec["mounts"].extend(mounts)
    with open(path, "w") as f:
        json.dump(spec, f, indent=1)
    return d
