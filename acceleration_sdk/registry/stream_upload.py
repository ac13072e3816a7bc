"""Uploading a blob while it is still being written (its digest known only at the end).

A converted layer is pushed as the converter produces it: ``write`` hands chunks to a background thread
that PATCHes them in order into one upload session; ``finish(digest)`` sends the last PUT. The queue is
bounded (memory stays at a few chunks) and the upload is best effort: any failure is recorded, the rest
of the bytes are dropped, and the caller pushes the blob again from the content store the ordinary way.
"""
from __future__ import annotations

import logging
import queue
import threading

from ..errors import DigestMismatchError
from ..reference import Reference
from .auth import repository_scope
from .transport import Transport

log = logging.getLogger("acceleration_sdk.registry")

CHUNK = 4 << 20  # bytes per PATCH: few requests, little memory
QUEUE_DEPTH = 2  # chunks waiting for the network at most
_END = object()


class StreamingUpload:
    def __init__(self, t: Transport, ref: Reference, chunk_size: int = CHUNK):
        self._t, self._ref, self._chunk = t, ref, chunk_size
        self._scopes = (repository_scope(ref.repository, "pull,push"),)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._buf = bytearray()
        self._location = ""
        self._offset = 0
        self._digest = ""
        self.error: BaseException | None = None
        self.done = False
        self._thread = threading.Thread(target=self._run, name="stream-upload", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side
    def write(self, data) -> None:
        if self.error is not None:
            return
        self._buf += data
        if len(self._buf) >= self._chunk:
            self._queue.put(bytes(self._buf))
            self._buf = bytearray()

    def finish(self, digest: str) -> bool:
        """Send what is left and commit the upload under ``digest``; True when the registry has the blob."""
        self._digest = digest
        if self._buf:
            self._queue.put(bytes(self._buf))
            self._buf = bytearray()
        self._queue.put(_END)
        self._thread.join()
        return self.done

    def abort(self) -> None:
        self._digest = ""
        self._queue.put(_END)
        self._thread.join()
        if self._location and not self.done:
            try:
                self._t.request("DELETE", self._ref, self._location, scopes=self._scopes,
                                what="cancel upload").close()
            except Exception:  # best effort: the registry expires abandoned uploads anyway
                pass

    # ------------------------------------------------------------------ the network thread
    def _run(self) -> None:
        what = f"push blob to {self._ref.name}"
        ended = False  # _END taken off the queue: nothing more will come to drain
        try:
            resp = self._t.request("POST", self._ref, f"/v2/{self._ref.repository}/blobs/uploads/",
                                   scopes=self._scopes, what=what, headers={"Content-Length": "0"})
            if resp.status_code != 202 or not resp.headers.get("Location"):
                raise self._t.error(resp, self._ref, what)
            self._location = resp.headers["Location"]
            resp.close()
            while True:
                item = self._queue.get()
                if item is _END:
                    ended = True
                    break
                self._patch(item, what)
            if self._digest:
                sep = "&" if "?" in self._location else "?"
                resp = self._t.request("PUT", self._ref, f"{self._location}{sep}digest={self._digest}",
                                       scopes=self._scopes, what=what, headers={"Content-Length": "0"})
                if resp.status_code != 201:
                    raise self._t.error(resp, self._ref, what)
                echoed = resp.headers.get("Docker-Content-Digest")
                resp.close()
                if echoed and echoed != self._digest:  # not our blob: the push phase uploads it from the store
                    raise DigestMismatchError(f"blob {self._digest} for {self._ref.name}: the registry stored it "
                                              f"as {echoed}", digest=self._digest, actual=echoed)
                self.done = True
        except BaseException as exc:  # recorded; the blob is pushed again from the store
            self.error = exc
            log.debug("streaming upload to %s failed, will push from the store: %s", self._ref.name, exc)
            while not ended and self._queue.get() is not _END:  # keep draining so the producer never blocks
                pass

    def _patch(self, data: bytes, what: str) -> None:
        end = self._offset + len(data) - 1
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                   "Content-Range": f"{self._offset}-{end}"}
        resp = self._t.request("PATCH", self._ref, self._location, scopes=self._scopes, what=what,
                               headers=headers, body=data)
        if resp.status_code != 202 or not resp.headers.get("Location"):
            raise self._t.error(resp, self._ref, what)
        self._location = resp.headers["Location"]
        resp.close()
        self._offset = end + 1
