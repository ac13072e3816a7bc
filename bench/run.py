"""``make bench``: acceld vs the reference converter (ctr-remote), registry to registry, on a real rootfs.

Builds (once, cached under bench/cache/) a Debian bookworm minbase root file system with debootstrap, using
the mirror apt is already configured with, and a 1 GiB single-layer image; pushes both to a loopback
registry; then, alternating, times pull + convert + push end to end for ours and ctr-remote (each run into a
fresh repository so nothing is skipped), measures peak RSS (wait4), prints a table of medians and ratios and
writes it as JSON under bench/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from acceleration_sdk.reference import parse  # noqa: E402
from acceleration_sdk.registry import RegistryClient  # noqa: E402
from bench.images import build_big_layer, build_rootfs, push_layer_image  # noqa: E402
from tests.support.registry import RegistryServer  # noqa: E402

CACHE = os.path.join(ROOT, "bench", "cache")
RESULTS = os.path.join(ROOT, "bench", "results")


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in bytes, CPU seconds (user + system) of that process)."""
    start = time.monotonic()
    err_file = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file, env=env)
    # Peak RSS is read from /proc (VmHWM) while the process runs: ru_maxrss is no good here, Linux carries
    # the parent's high-water mark into a forked child, so every child would seem as big as this script.
    peak_kib = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - start
    err_file.seek(0)
    err = err_file.read().decode(errors="replace")
    err_file.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {err[-2000:]}")
    return elapsed, peak_kib * 1024, usage.ru_utime + usage.ru_stime


class Containerd:
    """A private containerd (own root, state and socket) for ctr-remote; fresh for every reference run."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-containerd-")
        self.sock = os.path.join(self.dir, "containerd.sock")
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as fh:
            fh.write('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        self.log = open(os.path.join(self.dir, "containerd.log"), "wb")
        self.proc = subprocess.Popen(["containerd", "--config", cfg, "--root", os.path.join(self.dir, "root"),
                                      "--state", os.path.join(self.dir, "state"), "--address", self.sock],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while subprocess.run(["ctr", "-a", self.sock, "version"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("containerd did not start")
            time.sleep(0.1)

    def stop(self) -> float:
        """Stop containerd; returns the CPU seconds it used (its share of the reference's work)."""
        self.proc.terminate()
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return usage.ru_utime + usage.ru_stime


def reference_run(src: str, dst: str, zstd: bool, level: int, steps: dict) -> tuple[float, int, float]:
    """pull (ctr always unpacks too), convert, push; CPU includes containerd's. ``steps`` gets per-step walls."""
    ctrd = Containerd()
    t = cpu = 0.0
    rss = 0
    try:
        base = ["ctr-remote", "-a", ctrd.sock, "-n", "bench"]
        flags = ["--zstdchunked"] if zstd else ["--estargz", "--estargz-compression-level", str(level)]
        for step, cmd in (("pull", base + ["images", "pull", "--plain-http", src]),
                          ("convert", base + ["images", "convert", *flags, "--oci", src, dst]),
                          ("push", base + ["images", "push", "--plain-http", dst])):
            secs, peak, used = timed(cmd)
            steps.setdefault(step, []).append(secs)
            t, rss, cpu = t + secs, max(rss, peak), cpu + used
    finally:
        cpu += ctrd.stop()
    return t, rss, cpu


def ours_run(src: str, work_dir: str, compression: str, level: int) -> tuple[float, int, float]:
    if compression == "nydus":  # the nydus driver with its defaults (zstd, blake3, 1 MiB chunks)
        driver = {"type": "nydus", "config": {}}
    elif compression == "nydus oci_ref":  # zran: the gzip layer is referenced, not rewritten (1 MiB chunks)
        driver = {"type": "nydus", "config": {"oci_ref": True}}
    elif compression == "soci":  # the soci driver with its defaults (4 MiB spans, layers >= 10 MiB)
        driver = {"type": "soci", "config": {}}
    else:
        driver = {"type": "estargz", "config": {"compression": compression, "compression_level": level}}
    cfg = os.path.join(work_dir, "config.yaml")
    with open(cfg, "w") as fh:
        json.dump({"provider": {"work_dir": os.path.join(work_dir, "work")},
                   "converter": {"driver": driver, "rules": [{"tag_suffix": "-acc"}]}}, fh)
    return timed([os.path.join(ROOT, ".venv", "bin", "python"), "-m", "acceleration_sdk.cli", "convert", "-q",
                  "--config", cfg, src], env=ours_env())


def ours_env() -> dict:
    """accelctl's environment: with bytecode caching, as an installed package runs (pip writes the .pyc files).

    A session may export PYTHONDONTWRITEBYTECODE (keeping worktrees clean); then every run compiled the
    SDK's and the driver's ~40 modules from source (~0.05-0.1 s of a ~1 s soci run, the same for every
    format). The .pyc files go under bench/cache/pycache (git-ignored), compiled once by :func:`warm_bytecode`.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(CACHE, "pycache")
    return env


def warm_bytecode() -> None:
    """Compile the SDK and the drivers once, before anything is timed (see :func:`ours_env`)."""
    subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-m", "compileall", "-q",
                    os.path.join(ROOT, "acceleration_sdk"), os.path.join(ROOT, "drivers")],
                   env=ours_env(), check=True, stdout=subprocess.DEVNULL)


def fresh_repo(client: RegistryClient, source: str, name: str) -> str:
    """Copy ``source`` into a new repository by cross-repo mounts (cheap), so no run finds its output pushed."""
    src = parse(source)
    dst = parse(f"{src.host}/{name}:v1")
    fetched = client.get_manifest(src)
    manifest = json.loads(fetched.raw)
    for blob in [manifest["config"], *manifest["layers"]]:
        client.push_blob(dst, blob["digest"], blob["size"], _NoBytes(), mount_from=src)
    client.put_manifest(dst, fetched.raw, fetched.media_type)
    return str(dst)


def image_size(client: RegistryClient, ref: str) -> int:
    """Config + layer bytes of a single-manifest image, as its manifest states them."""
    manifest = json.loads(client.get_manifest(parse(ref)).raw)
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def soci_index_size(client: RegistryClient, ref: str) -> int:
    """Bytes a SOCI conversion adds: the ztocs, the SOCI index manifest and the {} config of each platform."""
    r = parse(ref)
    top = json.loads(client.get_manifest(r).raw)
    total = 0
    for d in top["manifests"]:
        if d.get("artifactType") == "application/vnd.amazon.soci.index.v2+json":
            index = json.loads(client.get_manifest(r.with_digest(d["digest"])).raw)
            total += d["size"] + index["config"]["size"] + sum(x["size"] for x in index["layers"])
    return total


class _NoBytes:
    def read(self, n=-1):
        raise RuntimeError("cross-repository mount failed")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ours (estargz at level 9 and again from the layer cache, zstd:chunked, estargz level 1, nydus, soci) and the
# reference's runs (ctr-remote, against which the targets are set)
PHASES = ("estargz", "zstdchunked", "estargz1", "nydus", "zran", "soci", "ctr-estargz", "ctr-zstdchunked")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="runs of each measure (medians are reported)")
    ap.add_argument("--skip-reference", action="store_true", help="time ours only")
    ap.add_argument("--skip-big", action="store_true", help="skip the 1 GiB layer RSS measure")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"comma-separated phases to run (default all: {','.join(PHASES)}); e.g. "
                         "--only soci,zstdchunked,ctr-estargz for the soci ratios")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if args.skip_reference:
        only -= {"ctr-estargz", "ctr-zstdchunked"}
    if only - set(PHASES):
        ap.error(f"unknown phases {sorted(only - set(PHASES))} (known: {','.join(PHASES)})")
    os.makedirs(CACHE, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    rootfs = build_rootfs(CACHE)
    warm_bytecode()
    big = None if args.skip_big else build_big_layer(CACHE)
    work = tempfile.mkdtemp(prefix="acceld-bench-")
    registry = RegistryServer(os.path.join(work, "registry")).start()
    try:
        client = RegistryClient()
        source = push_layer_image(client, f"{registry.host}/bench/rootfs:v1", rootfs)
        rows: dict[str, list[tuple[float, int, float]]] = {}
        sizes = {"source": image_size(client, source)}  # bytes of config + layers, per output format
        big_sizes: dict[str, int] = {}
        ref_steps: dict[str, dict[str, list[float]]] = {}

        loads: list[float] = []  # the 1-minute load average after each run: how shared the machine was

        def record(key, value):
            rows.setdefault(key, []).append(value)
            loads.append(os.getloadavg()[0])
            print(f"  {key:28} {value[0]:7.2f} s wall {value[2]:7.2f} s CPU {value[1] / 1e6:7.1f} MB"
                  f"   load {loads[-1]:.1f}", flush=True)

        n = 0
        for rep in range(args.reps):
            print(f"rep {rep + 1}/{args.reps}", flush=True)
            for compression, level, ref_level in (("estargz", 9, 9), ("zstdchunked", 3, 0)):
                n += 1
                if compression in only:
                    repo = fresh_repo(client, source, f"bench/ours-{n}")
                    run_dir = tempfile.mkdtemp(dir=work)
                    record(f"ours {compression}", ours_run(repo, run_dir, compression, level))
                    sizes[compression] = image_size(client, repo + "-acc")
                    if compression == "estargz":
                        record("ours estargz again", ours_run(repo, run_dir, compression, level))
                if f"ctr-{compression}" in only:
                    repo = fresh_repo(client, source, f"bench/ref-{n}")
                    record(f"ctr-remote {compression}",
                           reference_run(repo, repo + "-ref", compression == "zstdchunked", ref_level,
                                         ref_steps.setdefault(f"ctr-remote {compression}", {})))
            if "estargz1" in only:
                n += 1
                repo = fresh_repo(client, source, f"bench/fast-{n}")
                record("ours estargz level 1", ours_run(repo, tempfile.mkdtemp(dir=work), "estargz", 1))
            if "nydus" in only:
                n += 1
                repo = fresh_repo(client, source, f"bench/nydus-{n}")
                record("ours nydus", ours_run(repo, tempfile.mkdtemp(dir=work), "nydus", 0))
                sizes["nydus"] = image_size(client, repo + "-acc")
            if "zran" in only:
                n += 1
                repo = fresh_repo(client, source, f"bench/zran-{n}")
                record("ours nydus oci_ref", ours_run(repo, tempfile.mkdtemp(dir=work), "nydus oci_ref", 0))
                sizes["nydus oci_ref (gzip layers unchanged)"] = image_size(client, repo + "-acc")
            if "soci" in only:
                n += 1
                repo = fresh_repo(client, source, f"bench/soci-{n}")
                record("ours soci", ours_run(repo, tempfile.mkdtemp(dir=work), "soci", 0))
                sizes["soci index (layers unchanged)"] = soci_index_size(client, repo + "-acc")
        if big:
            big_src = push_layer_image(client, f"{registry.host}/bench/big:v1", big)
            if "estargz1" in only:
                record("ours 1 GiB layer level 1", ours_run(big_src, tempfile.mkdtemp(dir=work), "estargz", 1))
            if "nydus" in only:
                big_nydus = fresh_repo(client, big_src, "bench/big-nydus")
                record("ours 1 GiB layer nydus", ours_run(big_nydus, tempfile.mkdtemp(dir=work), "nydus", 0))
            if "zran" in only:
                big_zran = fresh_repo(client, big_src, "bench/big-zran")
                record("ours 1 GiB layer nydus oci_ref",
                       ours_run(big_zran, tempfile.mkdtemp(dir=work), "nydus oci_ref", 0))
            if "soci" in only:
                for rep in range(args.reps):
                    big_soci = fresh_repo(client, big_src, f"bench/big-soci-{rep}")
                    record("ours 1 GiB layer soci", ours_run(big_soci, tempfile.mkdtemp(dir=work), "soci", 0))
                big_sizes["source"] = image_size(client, big_src)
                big_sizes["soci index (layer unchanged)"] = soci_index_size(client, big_soci + "-acc")
            if "zstdchunked" in only and "soci" in only:  # the soci / zstd:chunked ratio on the big layer too
                for rep in range(args.reps):
                    big_zstd = fresh_repo(client, big_src, f"bench/big-zstd-{rep}")
                    record("ours 1 GiB layer zstdchunked",
                           ours_run(big_zstd, tempfile.mkdtemp(dir=work), "zstdchunked", 3))

        med = {k: {"seconds": median([v[0] for v in vs]), "cpu_seconds": median([v[2] for v in vs]),
                   "peak_rss_mb": max(v[1] for v in vs) / 1e6, "runs": [v[0] for v in vs]}
               for k, vs in rows.items()}
        for k, steps in ref_steps.items():
            med[k]["steps"] = {step: median(walls) for step, walls in steps.items()}

        def ratio(a, b, measure="seconds"):
            return med[a][measure] / med[b][measure] if a in med and b in med else None

        ratios = {
            "estargz ours/ctr-remote (target <= 0.25)": ratio("ours estargz", "ctr-remote estargz"),
            "zstdchunked ours/ctr-remote (target <= 0.30)": ratio("ours zstdchunked", "ctr-remote zstdchunked"),
            "estargz level 1 / ctr-remote level 9 (target <= 0.10)": ratio("ours estargz level 1",
                                                                           "ctr-remote estargz"),
            "second conversion / first (target <= 0.05)": ratio("ours estargz again", "ours estargz"),
            "nydus / ours zstdchunked (target <= 1.3)": ratio("ours nydus", "ours zstdchunked"),
            "nydus / ctr-remote estargz (target <= 0.15)": ratio("ours nydus", "ctr-remote estargz"),
            "soci / ctr-remote estargz (target <= 0.05)": ratio("ours soci", "ctr-remote estargz"),
            "nydus oci_ref / ctr-remote estargz (target <= 0.05)": ratio("ours nydus oci_ref", "ctr-remote estargz"),
            "soci / ours zstdchunked (target <= 0.5)": ratio("ours soci", "ours zstdchunked"),
        }
        cpu_ratios = {
            "estargz ours/ctr-remote": ratio("ours estargz", "ctr-remote estargz", "cpu_seconds"),
            "zstdchunked ours/ctr-remote": ratio("ours zstdchunked", "ctr-remote zstdchunked", "cpu_seconds"),
            "estargz level 1 / ctr-remote level 9": ratio("ours estargz level 1", "ctr-remote estargz",
                                                          "cpu_seconds"),
            "nydus oci_ref / ctr-remote estargz": ratio("ours nydus oci_ref", "ctr-remote estargz", "cpu_seconds"),
            "soci / ctr-remote estargz": ratio("ours soci", "ctr-remote estargz", "cpu_seconds"),
            "soci / ours zstdchunked": ratio("ours soci", "ours zstdchunked", "cpu_seconds"),
            "soci / ours zstdchunked, 1 GiB layer": ratio("ours 1 GiB layer soci", "ours 1 GiB layer zstdchunked",
                                                          "cpu_seconds"),
        }
        ratios["soci / ours zstdchunked, 1 GiB layer"] = ratio("ours 1 GiB layer soci",
                                                               "ours 1 GiB layer zstdchunked")
        print("\n| measure | median wall s | median CPU s | peak RSS MB |\n|---|---|---|---|")
        for k, v in med.items():
            steps = ", ".join(f"{s} {w:.1f}" for s, w in v.get("steps", {}).items())
            print(f"| {k} | {v['seconds']:.2f}{f' ({steps})' if steps else ''} | {v['cpu_seconds']:.2f} | "
                  f"{v['peak_rss_mb']:.0f} |")
        print("\n| ratio (wall) | value |\n|---|---|")
        for k, v in ratios.items():
            print(f"| {k} | {'n/a' if v is None else f'{v:.3f}'} |")
        print("\n| ratio (CPU seconds; steadier on a shared machine) | value |\n|---|---|")
        for k, v in cpu_ratios.items():
            print(f"| {k} | {'n/a' if v is None else f'{v:.3f}'} |")
        print("\n| image bytes (rootfs) | value | / source |\n|---|---|---|")
        for k, v in sizes.items():
            print(f"| {k} | {v} | {v / sizes['source']:.3f} |")
        if big_sizes:
            print("\n| image bytes (1 GiB layer) | value | / source |\n|---|---|---|")
            for k, v in big_sizes.items():
                print(f"| {k} | {v} | {v / big_sizes['source']:.3f} |")
        if loads:
            print(f"\nload average (1 min) after the runs: min {min(loads):.1f}, median {median(loads):.1f}, "
                  f"max {max(loads):.1f} on {os.cpu_count()} CPUs")
        load = os.getloadavg()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = {"date": stamp, "cpus": os.cpu_count(), "loadavg_at_end": load,
               "rootfs_bytes": os.path.getsize(rootfs), "medians": med, "ratios": ratios, "cpu_ratios": cpu_ratios, "image_bytes": sizes,
               "image_bytes_big": big_sizes, "loadavg_runs": loads, "phases": sorted(only)}
        partial = set(args.only.split(",")) != set(PHASES)  # --only: latest.json stays the last full run
        for name in ([f"{stamp}-partial.json"] if partial else [f"{stamp}.json", "latest.json"]):
            with open(os.path.join(RESULTS, name), "w") as fh:
                json.dump(out, fh, indent=2)
        print(f"\nwritten bench/results/{stamp}{'-partial' if partial else ''}.json")
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
