"""``GET /api/v1/conversions`` in acceld's shape, rendered straight from database rows.

acceld answers with every task it keeps, so the default list grows with the table. Through DRF
serializers a task cost ~60 µs (10,000 tasks: 0.6 s in one process, 1.5-2.5 s under load, bench/api.py);
here each row is fetched as plain values (on SQLite the times and the id as stored text, so nothing is
parsed into datetime or UUID objects) and formatted into the JSON by hand: ~10 µs a task. The bytes are
exactly those of ``TaskSerializer`` through ``AcceldJSONRenderer`` (a test compares the two).

On SQLite the unfiltered list is also kept per process and answered again while nothing at all has
been committed to the database since it was rendered. ``PRAGMA data_version`` on a private connection
tells that: it changes with every commit by any other connection, so any write, from any process,
renders afresh. A poll of an idle service then costs one pragma instead of a render.
"""
from __future__ import annotations

import datetime
import os
import sqlite3
import threading
import uuid
from json.encoder import encode_basestring

from django.db import connection
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils.dateparse import parse_datetime
from rest_framework.pagination import LimitOffsetPagination

from . import selectors
from .serializers import GO_ZERO_TIME, rfc3339

# TaskSerializer's fields in its order; status and strings escaped as JSON, sizes are integers.
_ROW = ('{"id":"%s","created":"%s","finished":"%s","source":%s,"source_size":%d,"target_size":%d,'
        '"status":%s,"reason":%s,"target":%s,"route":%s}')
_VALUES = ("source", "source_size", "target_size", "status", "reason", "target", "route")


class TaskPagination(LimitOffsetPagination):
    """``?paginated=true``: DRF's ``count``/``next``/``previous``/``results`` over ``?limit``/``?offset``
    (already checked by ``ListQuerySerializer``, whose 1000 is also the cap here)."""

    default_limit = 100
    max_limit = 1000


def _json_str(text: str) -> str:
    """A JSON string as DRF writes it: UTF-8 kept, U+2028/U+2029 escaped (a strict JavaScript subset)."""
    out = encode_basestring(text)
    if "\u2028" in out or "\u2029" in out:
        out = out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return out


def _sqlite_time(text: str | None) -> str:
    """RFC3339 from the text Django stores on SQLite (naive UTC ``YYYY-MM-DD HH:MM:SS[.ffffff]``)."""
    if text is None:
        return GO_ZERO_TIME
    if len(text) == 19 and text[10] == " ":
        return f"{text[:10]}T{text[11:]}Z"
    if len(text) == 26 and text[10] == " " and text[19] == ".":
        return f"{text[:10]}T{text[11:]}".rstrip("0").rstrip(".") + "Z"
    value = parse_datetime(text)  # never written by Django, but stay faithful to whatever is there
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return rfc3339(value)


def _sqlite_id(text: str) -> str:
    if len(text) == 32:  # Django stores a UUID on SQLite as 32 hex digits
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return str(uuid.UUID(text))


def render(qs) -> bytes:
    """``qs`` (a ConversionTask queryset, ordered and sliced as wanted) as acceld's JSON array, plus newline."""
    if connection.vendor == "sqlite":
        rows = qs.values_list(Cast("id", TextField()), Cast("created", TextField()), Cast("finished", TextField()),
                              *_VALUES)
        parts = [_ROW % (_sqlite_id(i), _sqlite_time(c), _sqlite_time(f), _json_str(s), ss, ts, _json_str(st),
                         _json_str(r), _json_str(t), _json_str(ro)) for i, c, f, s, ss, ts, st, r, t, ro in rows]
    else:
        rows = qs.values_list("id", "created", "finished", *_VALUES)
        parts = [_ROW % (i, rfc3339(c), rfc3339(f), _json_str(s), ss, ts, _json_str(st), _json_str(r),
                         _json_str(t), _json_str(ro)) for i, c, f, s, ss, ts, st, r, t, ro in rows]
    return ("[" + ",".join(parts) + "]\n").encode()


def task_list(*, status: str = "", source: str = "", offset: int = 0, limit: int | None = None,
              hosts: tuple[str, ...] | None = None) -> bytes:
    """The list acceld's way (newest first), filtered and sliced like ``selectors.conversion_list``."""
    qs = selectors.conversion_list(status=status, source=source, hosts=hosts)
    if not (status or source or offset or limit) and hosts is None:
        return _full_list(qs)
    return render(qs[offset:offset + limit] if limit else qs[offset:])


class _Unchanged:
    """The last full list of this process and the database's ``data_version`` it was rendered at."""

    def __init__(self):
        self.lock = threading.Lock()  # one render at a time; threads waiting for it get its result
        self.version: tuple | None = None
        self.body = b""
        self._conn: sqlite3.Connection | None = None
        self._key: tuple = ()

    def data_version(self, path: str) -> tuple | None:
        """A token that changes whenever anything is committed to ``path``; None when it cannot be read."""
        key = (path, os.getpid())  # a forked child must not use its parent's connection
        try:
            if self._key != key:
                self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                self._key = key
            return key + (self._conn.execute("PRAGMA data_version").fetchone()[0],)
        except sqlite3.Error:
            self._key, self._conn = (), None
            return None


_unchanged = _Unchanged()


def _full_list(qs) -> bytes:
    # Inside a transaction (a test's, or a caller's) this connection may see rows no other one can.
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return render(qs)
    with _unchanged.lock:
        # Read the version first: the rows read after it are at least that new, so a write in between
        # only causes one more render, never a stale answer.
        version = _unchanged.data_version(connection.settings_dict["NAME"])
        if version is not None and version == _unchanged.version:
            return _unchanged.body
        body = render(qs)
        _unchanged.version, _unchanged.body = version, body
        return body
