"""The real lazy-pulling client for tests: containerd + stargz-snapshotter, started privately and stopped always.

``build_snapshotter()`` compiles tests/support/stargz_grpc/main.go (our own small main around Debian's
stargz-snapshotter 0.12 library, golang-github-containerd-stargz-snapshotter-dev) once into the git-ignored
``.cache/stargz/``; the binary's name carries a hash of its inputs, so an edited main is rebuilt.

``LazyPullStack(registry_host).start()`` runs, as root with /dev/fuse, the snapshotter (plain-HTTP mirror for
the loopback registry, ``no_background_fetch`` so what is fetched is what was asked for) and a private
containerd (own root, state and socket; the snapshotter as proxy plugin ``stargz``) and drives them with
Debian's ``ctr-remote``/``ctr``. ``stop()`` kills leftover tasks, stops both daemons by PID and lazily unmounts
anything still mounted under the stack's directory -- called from fixture teardown, also after a failure. A
session killed outright leaves its directory with a ``pids`` file; the next ``start()`` sweeps it
(:func:`sweep_stale`: kills those daemons by PID, unmounts, removes).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
SOURCE = pathlib.Path(__file__).resolve().parent / "stargz_grpc" / "main.go"
CACHE = REPO / ".cache" / "stargz"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their sources
LIBRARY = f"{GOPATH}/src/github.com/containerd/stargz-snapshotter"
# service/resolver/cri.go needs k8s.io/cri-api, which Debian does not package; our main never uses it, so the
# build hides it with go's -overlay (no copy of the library tree).
HIDDEN = [f"{LIBRARY}/service/resolver/cri.go"]
REMOTE_LABEL = "containerd.io/snapshot/remote"  # set by stargz-snapshotter on a lazily mounted layer
NAMESPACE = "default"
PREFIX = "acceld-lazy-"  # the stack's temp directory; a killed session's is swept by the next start


def _alive(pid: int, name: str) -> bool:
    """``pid`` runs a program called ``name`` (not a reused PID)."""
    try:
        return os.path.basename(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0]).decode() == name
    except OSError:
        return False


def sweep_stale() -> None:
    """A session killed outright (SIGKILL, OOM) never ran its teardown: stop its daemons, unmount, remove."""
    for stale in pathlib.Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            owner, *daemons = (line.split() for line in (stale / "pids").read_text().splitlines())
        except (OSError, ValueError):
            continue  # still starting, or not ours
        if _alive(int(owner[0]), owner[1]):
            continue
        for pid, name in daemons:
            if _alive(int(pid), name):
                os.kill(int(pid), signal.SIGKILL)
        for point, _ in mounts_under(str(stale)):
            subprocess.run(["umount", "-l", point], capture_output=True)
        if not mounts_under(str(stale)):
            shutil.rmtree(stale, ignore_errors=True)


def build_snapshotter() -> pathlib.Path:
    overlay = json.dumps({"Replace": {path: "" for path in HIDDEN}}, sort_keys=True)
    tag = hashlib.sha256(SOURCE.read_bytes() + overlay.encode()).hexdigest()[:16]
    binary = CACHE / f"containerd-stargz-grpc-{tag}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    overlay_path = CACHE / f"overlay-{tag}.{os.getpid()}.json"  # per process: parallel sessions build at once
    overlay_path.write_text(overlay)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(CACHE / "gocache"),
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run(["go", "build", "-overlay", str(overlay_path), "-o", str(tmp), SOURCE.name],
                          cwd=SOURCE.parent, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"building containerd-stargz-grpc failed:\n{proc.stderr}"
    os.replace(tmp, binary)  # atomic: a parallel session never runs a half-written binary
    overlay_path.unlink()
    for stale in CACHE.glob("containerd-stargz-grpc-*"):
        if stale != binary and ".tmp" not in stale.name:
            stale.unlink(missing_ok=True)
    return binary


def _wait_for(path: str, proc: subprocess.Popen, log_path: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {_tail(log_path)}")
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not create {path} within {timeout} s: {_tail(log_path)}")


def _tail(path: str, n: int = 3000) -> str:
    try:
        return open(path, encoding="utf-8", errors="replace").read()[-n:]
    except OSError:
        return "(no log)"


def mounts_under(root: str) -> list[tuple[str, str]]:
    """(mountpoint, fstype) of every mount below ``root``, deepest first (the order to unmount them)."""
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            fstype = fields[fields.index("-") + 1]
            if point == root or point.startswith(root.rstrip("/") + "/"):
                found.append((point, fstype))
    return sorted(found, key=lambda m: -len(m[0]))


class LazyPullStack:
    def __init__(self, registry_host: str, *, binary: pathlib.Path | None = None, no_background_fetch: bool = True):
        self.registry_host = registry_host
        self.binary = binary or build_snapshotter()
        self.no_background_fetch = no_background_fetch
        # short: unix socket paths must stay under 108 bytes
        self.dir = tempfile.mkdtemp(prefix=PREFIX)
        self.stargz_sock = os.path.join(self.dir, "stargz.sock")
        self.containerd_sock = os.path.join(self.dir, "containerd.sock")
        self.stargz_root = os.path.join(self.dir, "stargz")
        self.stargz_log = os.path.join(self.dir, "stargz.log")
        self.containerd_log = os.path.join(self.dir, "containerd.log")
        self.procs: list[subprocess.Popen] = []

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> "LazyPullStack":
        sweep_stale()
        self._record()
        try:
            self._start_snapshotter()
            self._start_containerd()
        except BaseException:
            self.stop()
            raise
        return self

    def _record(self) -> None:
        """Who owns this directory and which daemons it started, for :func:`sweep_stale`."""
        owner = os.path.basename(open("/proc/self/cmdline", "rb").read().split(b"\0")[0]).decode()
        lines = [f"{os.getpid()} {owner}"] + [f"{p.pid} {os.path.basename(p.args[0])}" for p in self.procs]
        with open(os.path.join(self.dir, "pids.tmp"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(os.path.join(self.dir, "pids.tmp"), os.path.join(self.dir, "pids"))

    def _start_snapshotter(self) -> None:
        config = os.path.join(self.dir, "stargz.toml")
        with open(config, "w") as fh:
            fh.write(f"no_background_fetch = {str(self.no_background_fetch).lower()}\n"
                     f'[[resolver.host."{self.registry_host}".mirrors]]\n'
                     f'  host = "{self.registry_host}"\n  insecure = true\n')
        log = open(self.stargz_log, "ab")
        self.procs.append(subprocess.Popen(
            [str(self.binary), "-address", self.stargz_sock, "-root", self.stargz_root, "-config", config],
            stdout=log, stderr=subprocess.STDOUT))
        log.close()
        self._record()
        _wait_for(self.stargz_sock, self.procs[-1], self.stargz_log, "containerd-stargz-grpc")

    def _start_containerd(self) -> None:
        config = os.path.join(self.dir, "containerd.toml")
        with open(config, "w") as fh:
            fh.write(f'version = 2\nroot = "{self.dir}/containerd-root"\nstate = "{self.dir}/containerd-state"\n'
                     'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                     f'[grpc]\n  address = "{self.containerd_sock}"\n'
                     f'[ttrpc]\n  address = "{self.containerd_sock}.ttrpc"\n'
                     f'[proxy_plugins.stargz]\n  type = "snapshot"\n  address = "{self.stargz_sock}"\n')
        log = open(self.containerd_log, "ab")
        self.procs.append(subprocess.Popen(["containerd", "--config", config], stdout=log,
                                           stderr=subprocess.STDOUT))
        log.close()
        self._record()
        _wait_for(self.containerd_sock, self.procs[-1], self.containerd_log, "containerd")
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd does not answer: {_tail(self.containerd_log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.procs and self.procs[-1].poll() is None and len(self.procs) == 2:
            for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
                self.ctr("tasks", "delete", "-f", task, check=False)
        for proc in reversed(self.procs):  # containerd first, then the snapshotter (which unmounts its layers)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []
        for point, _ in mounts_under(self.dir):  # whatever a killed daemon left behind
            subprocess.run(["umount", "-l", point], capture_output=True)
        if not mounts_under(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- clients --------------------------------------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True, timeout: float = 300,
            tool: str = "ctr") -> subprocess.CompletedProcess:
        proc = subprocess.run([tool, "-a", self.containerd_sock, "-n", NAMESPACE, *args], capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:  # the daemons' logs vanish with the stack: say what they said
            raise AssertionError(f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                                 f"containerd: {_tail(self.containerd_log, 1500)}\n"
                                 f"snapshotter: {_tail(self.stargz_log, 1500)}")
        return proc

    def rpull(self, ref: str) -> None:
        """Lazily pull ``ref`` into the stargz snapshotter (falls back to a full download where it cannot)."""
        self.ctr("images", "rpull", "--plain-http", ref, tool="ctr-remote")

    def pull(self, ref: str) -> None:
        """An ordinary pull, unpacked by containerd's overlayfs snapshotter: the witness to compare with."""
        self.ctr("images", "pull", "--plain-http", ref)

    def run(self, ref: str, name: str, *cmd: str, snapshotter: str = "stargz") -> str:
        return self.ctr("run", "--rm", "--snapshotter", snapshotter, "--net-host", ref, name, *cmd).stdout

    def content_digests(self) -> set[str]:
        """Blob digests in containerd's content store: a layer here was downloaded whole."""
        out = self.ctr("content", "ls", "-q").stdout
        return set(re.findall(r"sha256:[0-9a-f]{64}", out))

    def snapshots(self) -> dict[str, dict]:
        """The stargz snapshotter's snapshots by key, with their labels (``ctr snapshots info``)."""
        out = self.ctr("snapshots", "--snapshotter", "stargz", "ls").stdout.splitlines()[1:]
        infos = {}
        for line in out:
            key = line.split()[0]
            infos[key] = json.loads(self.ctr("snapshots", "--snapshotter", "stargz", "info", key).stdout)
        return infos

    def fuse_mounts(self) -> list[str]:
        return [point for point, fstype in mounts_under(self.stargz_root) if fstype.startswith("fuse")]

    def snapshotter_log(self) -> str:
        return _tail(self.stargz_log, 1 << 30)
