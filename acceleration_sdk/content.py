"""A digest-addressed content store on disk, shared by conversions (threads and processes).

Layout under ``root``::

    blobs/sha256/<hex>   verified blobs, written once (ingest -> hash while streaming -> verify -> rename)
    ingest/              temp files of blobs being written; never read by anyone else
    tmp/                 scratch space for drivers (spooled tars)
    index.db             SQLite: blob sizes, use counts and last use (for GC), leases, layer cache

"Already exists" is success: two writers of the same digest both succeed and one file remains.
GC evicts least-used, then least-recently-used blobs until the store is under ``threshold`` bytes, and
never a blob leased by a live conversion (acceld #174).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from typing import BinaryIO, Iterable, Iterator

from .errors import ContentError, DigestMismatchError, StorageFullError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
                                  uses INTEGER NOT NULL DEFAULT 0, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (id TEXT NOT NULL, digest TEXT NOT NULL, pid INTEGER NOT NULL,
                                   PRIMARY KEY (id, digest));
CREATE TABLE IF NOT EXISTS layer_cache (key TEXT PRIMARY KEY, descriptor TEXT NOT NULL, diff_id TEXT NOT NULL,
                                        created REAL NOT NULL);
"""


def _translate_os_error(exc: OSError, what: str) -> ContentError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"no space left on the device under work_dir while writing {what}")
    return ContentError(f"cannot write {what}: {exc.strerror or exc}")


class Ingest:
    """A blob being written: ``write`` hashes while copying; ``commit`` verifies and renames into place."""

    def __init__(self, store: "ContentStore", expected: str | None = None):
        self._store = store
        self.expected = expected
        fd, self.path = tempfile.mkstemp(dir=store.ingest_dir, prefix="ingest-")
        self._fh = os.fdopen(fd, "wb", buffering=1 << 20)
        self._h = hashlib.sha256()
        self.size = 0
        self.digest: str | None = None

    def write(self, data) -> int:
        try:
            self._fh.write(data)
        except OSError as exc:
            self.abort()
            raise _translate_os_error(exc, self.expected or "a blob") from exc
        self._h.update(data)
        self.size += len(data)
        return len(data)

    def commit(self, expected: str | None = None) -> str:
        expected = expected or self.expected
        digest = "sha256:" + self._h.hexdigest()
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:
            self.abort()
            raise _translate_os_error(exc, expected or digest) from exc
        if expected and expected != digest:
            self.abort()
            raise DigestMismatchError(f"blob {expected} does not match its content ({digest})",
                                      digest=expected, actual=digest)
        final = self._store.path(digest)
        self._store._lease_new(digest)  # leased before GC can see it: a GC elsewhere may run right now
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(self.path, final)  # atomic; an existing identical blob is simply replaced
        self._store._record(digest, self.size)
        self.digest = digest
        return digest

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def __enter__(self) -> "Ingest":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None or self.digest is None:
            self.abort()


class ContentStore:
    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))
        self.blobs_dir = os.path.join(self.root, "blobs", "sha256")
        self.ingest_dir = os.path.join(self.root, "ingest")
        self.tmp_dir = os.path.join(self.root, "tmp")
        try:
            for d in (self.blobs_dir, self.ingest_dir, self.tmp_dir):
                os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise ContentError(f"work_dir {self.root} is not usable: {exc.strerror}") from exc
        self._local = threading.local()
        self._open_leases: dict[str, Lease] = {}  # blobs committed while a lease is open are leased by it
        self._leases_lock = threading.Lock()
        with self._db() as db:
            db.executescript(_SCHEMA)

    # -------------------------------------------------------------- index
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(os.path.join(self.root, "index.db"), timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        try:
            yield conn
        except sqlite3.OperationalError as exc:
            raise ContentError(f"content index under {self.root} is not usable: {exc}") from exc

    def close(self) -> None:
        """Close this thread's index connection (other threads' connections close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def _record(self, digest: str, size: int) -> None:
        with self._db() as db:
            db.execute("INSERT INTO blobs(digest, size, uses, last_used) VALUES (?, ?, 1, ?) "
                       "ON CONFLICT(digest) DO UPDATE SET uses = uses + 1, last_used = excluded.last_used",
                       (digest, size, time.time()))

    # -------------------------------------------------------------- blobs
    def path(self, digest: str) -> str:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
            raise ContentError(f"invalid digest {digest!r}", digest=digest)
        return os.path.join(self.blobs_dir, hexpart)

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def size(self, digest: str) -> int:
        return os.path.getsize(self.path(digest))

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for reading and count the use (GC keeps what is used often)."""
        try:
            fh = open(self.path(digest), "rb")
        except FileNotFoundError:
            raise ContentError(f"blob {digest} is not in the content store", digest=digest) from None
        self._record(digest, os.fstat(fh.fileno()).st_size)
        return fh

    def writer(self, expected: str | None = None) -> Ingest:
        try:
            return Ingest(self, expected)
        except OSError as exc:
            raise _translate_os_error(exc, expected or "a blob") from exc

    def write_bytes(self, data: bytes, expected: str | None = None) -> str:
        with self.writer(expected) as w:
            w.write(data)
            return w.commit()

    def read_bytes(self, digest: str, limit: int = 16 << 20) -> bytes:
        with self.open(digest) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise ContentError(f"blob {digest} is larger than {limit} bytes", digest=digest)
        return data

    # -------------------------------------------------------------- layer cache
    def cache_get(self, key: str) -> tuple[dict, str] | None:
        with self._db() as db:
            row = db.execute("SELECT descriptor, diff_id FROM layer_cache WHERE key = ?", (key,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def cache_put(self, key: str, descriptor: dict, diff_id: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO layer_cache(key, descriptor, diff_id, created) VALUES (?, ?, ?, ?)",
                       (key, json.dumps(descriptor), diff_id, time.time()))

    def cache_delete(self, key: str) -> bool:
        """Forget a layer-cache row (its blob stays, for GC to judge); True when there was one."""
        with self._db() as db:
            return db.execute("DELETE FROM layer_cache WHERE key = ?", (key,)).rowcount > 0

    # -------------------------------------------------------------- leases and GC
    @contextlib.contextmanager
    def lease(self) -> Iterator["Lease"]:
        """A lease for one conversion. Every blob committed through this store while it is open is leased
        before it becomes visible, so a GC in another process never takes a blob between write and use."""
        lease = Lease(self, uuid.uuid4().hex)
        with self._leases_lock:
            self._open_leases[lease.id] = lease
        try:
            yield lease
        finally:
            with self._leases_lock:
                self._open_leases.pop(lease.id, None)
            with self._db() as db:
                db.execute("DELETE FROM leases WHERE id = ?", (lease.id,))

    def _lease_new(self, digest: str) -> None:
        with self._leases_lock:
            leases = list(self._open_leases.values())
        for lease in leases:
            lease.add([digest])

    def usage(self) -> int:
        with self._db() as db:
            return db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]

    def gc(self, threshold: int, stale_after: float | None = None) -> list[str]:
        """Evict blobs (least used, then least recent) until under ``threshold``; return what went.

        With ``stale_after`` (seconds), ingest files untouched that long are deleted too: a worker killed
        mid-layer (a timeout, kill -9) leaves its partial blob there, and nobody else ever will.
        """
        if stale_after is not None:
            self._remove_stale_ingests(stale_after)
        evicted: list[str] = []
        with self._db() as db, _immediate(db):  # leases and blobs read as one state, no commit in between
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]
            if total <= threshold:
                return evicted
            rows = db.execute("SELECT digest, pid FROM leases").fetchall()
            dead = {pid for _, pid in rows if not _alive(pid)}  # a crashed conversion leaves its lease behind
            leased = {digest for digest, pid in rows if pid not in dead}
            db.executemany("DELETE FROM leases WHERE pid = ?", [(pid,) for pid in dead])
            for digest, size in db.execute("SELECT digest, size FROM blobs ORDER BY uses ASC, last_used ASC").fetchall():
                if total <= threshold:
                    break
                if digest in leased:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(digest))
                db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
                total -= size
                evicted.append(digest)
            # layer-cache rows whose converted blob is gone are no longer useful
            for key, desc in db.execute("SELECT key, descriptor FROM layer_cache").fetchall():
                if json.loads(desc)["digest"] in evicted:
                    db.execute("DELETE FROM layer_cache WHERE key = ?", (key,))
        return evicted


    def _remove_stale_ingests(self, stale_after: float) -> None:
        cutoff = time.time() - stale_after
        with os.scandir(self.ingest_dir) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):  # gone already, or not ours to delete
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)


class Lease:
    """Marks blobs as in use by one running conversion; GC skips them while the owning process lives."""

    def __init__(self, store: ContentStore, lease_id: str):
        self.store, self.id = store, lease_id

    def add(self, digests: Iterable[str]) -> None:
        with self.store._db() as db:
            db.executemany("INSERT OR IGNORE INTO leases(id, digest, pid) VALUES (?, ?, ?)",
                           [(self.id, d, os.getpid()) for d in digests])


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction taken up front (``BEGIN IMMEDIATE``); committed even on error, since files are gone."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("COMMIT")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
