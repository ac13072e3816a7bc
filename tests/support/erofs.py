"""Readers of EROFS images we did not write: the Linux kernel (mount) and erofs-utils (fsck.erofs --extract).

    with erofs.mounted(bootstrap, [device0, device1]) as root:   # loop devices, mount -t erofs, always cleaned up
        tree = erofs.snapshot(root)
    tree = erofs.extracted(bootstrap, devices, tmp_path / "x")   # fsck.erofs --device=... --extract=DIR

Each device file holds a blob's uncompressed data at each chunk's uncompressed offset (what nydus's
service/src/block_device.rs exports). The kernel's ``device=`` option wants block devices, so each file gets a
loop device (``losetup -f --show``) that is detached in a ``finally``: loop devices are shared by everyone on
the machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from typing import Iterator


@dataclasses.dataclass(frozen=True)
class Seen:
    """One path as a reader of the file system shows it."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    target: str
    xattrs: tuple
    rdev: tuple
    ino: int
    nlink: int
    sha256: str


def requires_kernel():
    """A mark for tests that mount EROFS: skipped on a developer machine that cannot (not root, no erofs),
    never in CI (``CI`` set, as `.ci/run` does), where such a test must run and fails with the reason."""
    import pytest

    reason = kernel_can_mount()
    return pytest.mark.skipif(bool(reason) and not os.environ.get("CI"), reason=reason or "kernel mounts erofs")


def kernel_can_mount() -> str:
    """'' when EROFS mounts with loop devices here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "mounting needs root"
    with open("/proc/filesystems") as fh:
        if "erofs" not in fh.read():
            return "the kernel has no erofs file system (modprobe erofs)"
    if not shutil.which("losetup"):
        return "losetup is missing"
    return ""


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def mounted(bootstrap: str | os.PathLike, devices: list) -> Iterator[str]:
    loops: list[str] = []
    target = tempfile.mkdtemp(prefix="nydus-mnt-")
    is_mounted = False
    try:
        for dev in devices:
            loops.append(_run("losetup", "-f", "--show", "-r", os.fspath(dev)))
        opts = ",".join(["ro", "loop"] + [f"device={loop}" for loop in loops])
        _run("mount", "-t", "erofs", "-o", opts, os.fspath(bootstrap), target)
        is_mounted = True
        yield target
    finally:
        if is_mounted:
            subprocess.run(["umount", target], capture_output=True, timeout=60)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=60)
        os.rmdir(target)


def extracted(bootstrap: str | os.PathLike, devices: list, dest: str | os.PathLike) -> dict[str, Seen]:
    """fsck.erofs checks the image and extracts it (owners and modes preserved: we are root)."""
    args = ["fsck.erofs"] + [f"--device={os.fspath(d)}" for d in devices]
    _run(*args, f"--extract={os.fspath(dest)}", "--preserve", os.fspath(bootstrap))
    return snapshot(dest)


def snapshot(root: str | os.PathLike, data: bool = True) -> dict[str, Seen]:
    """Every path under ``root`` ("" is the root itself) with what lstat, readlink and the xattr calls show;
    ``data=False`` skips reading file bytes (a metadata-only image has no devices to read them from)."""
    root = os.fspath(root)
    out: dict[str, Seen] = {}
    out[""] = _seen(root, data)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = _seen(full, data)
    return out


def _seen(path: str, data: bool = True) -> Seen:
    st = os.lstat(path)
    kind = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
            stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}[stat.S_IFMT(st.st_mode)]
    xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                          for k in os.listxattr(path, follow_symlinks=False)))
    digest = ""
    if kind == "reg" and data:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for piece in iter(lambda: fh.read(1 << 20), b""):
                h.update(piece)
        digest = "sha256:" + h.hexdigest()
    rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else (0, 0)
    return Seen(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if kind != "dir" else 0,
                int(st.st_mtime), os.readlink(path) if kind == "symlink" else "", xattrs, rdev, st.st_ino, st.st_nlink, digest)
