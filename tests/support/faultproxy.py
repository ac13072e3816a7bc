"""A fault-injecting HTTP PROXY (a test fake) in front of a real ``docker-registry``.

The real registry cannot be told to answer 503 to the third PATCH or to hang up half way through a blob;
this proxy can. It forwards every request to the upstream registry unchanged (``Host`` included, so the
upload ``Location`` URLs the registry builds point back at the proxy) unless a :class:`Rule` matches:

    proxy = FaultProxy(registry.host).start()
    proxy.add("PATCH", r"/blobs/uploads/", status(503), times=2)   # the first two PATCHes get 503
    proxy.add("GET", r"/blobs/sha256:", cut_response(1000))        # every blob GET breaks after 1000 bytes
    proxy.add("PUT", r"/manifests/v1-esgz$", call(registry.stop))  # run something, then forward

A rule matches on the method and a regex searched in the path (query excluded); ``times`` limits how many
requests it takes (``None``: all), ``skip`` lets that many matching requests through first. ``hits`` records
``(method, path_with_query, outcome, headers)`` for every request, ``outcome`` being the upstream status, or the
fault injected, and ``headers`` the request's headers. When the upstream cannot be reached the proxy answers 502, as a load balancer would.

It is a fake: it models nothing of distribution, it only relays bytes and breaks them on purpose.
"""
from __future__ import annotations

import http.client
import http.server
import json
import re
import socket
import threading
from typing import Callable
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
PIECE = 64 << 10  # bytes relayed per write


class Fault:
    """What a matching rule does instead of (or before) forwarding."""

    name = "fault"

    def apply(self, handler: "_Handler", body: bytes | None) -> str:
        raise NotImplementedError


class status(Fault):  # noqa: N801 (reads like a verb in rules)
    """Answer ``code`` with a distribution-style error document, without asking the upstream."""

    def __init__(self, code: int, *, headers: dict | None = None, registry_code: str = "UNAVAILABLE",
                 message: str = "injected by the fault proxy"):
        self.code, self.headers = code, dict(headers or {})
        self.doc = json.dumps({"errors": [{"code": registry_code, "message": message}]}).encode()
        self.name = f"status {code}"

    def apply(self, handler, body):
        handler.send_response(self.code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(self.doc)))
        for k, v in self.headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(self.doc)
        return self.name


class cut_response(Fault):  # noqa: N801
    """Forward, send the upstream's headers (its full Content-Length) and ``after`` body bytes, then hang up."""

    def __init__(self, after: int):
        self.after = after
        self.name = f"cut response after {after}"

    def apply(self, handler, body):
        return handler.forward(body, cut_after=self.after)


class cut_request(Fault):  # noqa: N801
    """Read ``after`` bytes of the request body, then hang up without an answer (an upload that broke)."""

    def __init__(self, after: int):
        self.after = after
        self.name = f"cut request after {after}"

    def apply(self, handler, body):
        handler.hang_up()
        return self.name


class drop(Fault):  # noqa: N801
    """Hang up as soon as the request arrived."""

    name = "drop"

    def apply(self, handler, body):
        handler.hang_up()
        return self.name


class garbage(Fault):  # noqa: N801
    """Answer bytes that are not HTTP at all, then hang up (a confused middlebox)."""

    name = "garbage"

    def apply(self, handler, body):
        handler.wfile.write(b"\x00\xffSSH-2.0-not-a-registry\r\n\r\n")
        handler.wfile.flush()
        handler.hang_up()
        return self.name


class call(Fault):  # noqa: N801
    """Run ``fn()`` (kill the registry, pause...), then forward."""

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn
        self.name = "call"

    def apply(self, handler, body):
        self.fn()
        return handler.forward(body)


class Rule:
    def __init__(self, method: str, pattern: str, fault: Fault, times: int | None, skip: int):
        self.method, self.pattern, self.fault = method.upper(), re.compile(pattern), fault
        self.times, self.skip = times, skip
        self.matched = 0  # requests that matched (skipped ones included)
        self.applied = 0  # requests the fault was applied to

    def take(self, method: str, path: str) -> bool:
        if self.method not in ("*", method) or not self.pattern.search(path):
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        self.matched += 1
        if self.matched <= self.skip:
            return False
        self.applied += 1
        return True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: "FaultProxy"

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, OSError):
            self.close_connection = True

    def log_message(self, *args):
        pass

    def _read_body(self, limit: int | None = None) -> bytes | None:
        """The request body (de-chunked); with ``limit`` only that many bytes are read."""
        length = self.headers.get("Content-Length")
        if length is not None:
            n = int(length)
            return self.rfile.read(n if limit is None else min(n, limit))
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts, got = [], 0
            while limit is None or got < limit:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                got += size
                self.rfile.readline()
            return b"".join(parts)
        return None

    def _any(self):
        path = urlsplit(self.path).path
        rule = self.proxy.match(self.command, path)
        if isinstance(rule, cut_request):
            self._read_body(rule.after)
            outcome = rule.apply(self, None)
        else:
            body = self._read_body()
            outcome = rule.apply(self, body) if rule is not None else self.forward(body)
        self.proxy.record(self.command, self.path, outcome, dict(self.headers))

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def forward(self, body: bytes | None, cut_after: int | None = None):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.proxy.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
        except OSError:
            conn.close()
            doc = b'{"errors":[{"code":"UNAVAILABLE","message":"upstream unreachable (fault proxy)"}]}'
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(doc)
            return "502 upstream unreachable"
        try:
            length = resp.getheader("Content-Length")
            data = None
            if length is None and self.command != "HEAD":
                data = resp.read()  # chunked or close-delimited upstream: relay with a length
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and not (data is not None and k.lower() == "content-length"):
                    self.send_header(k, v)
            if data is not None:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return resp.status
            sent = 0
            pieces = iter([data]) if data is not None else iter(lambda: resp.read(PIECE), b"")
            for piece in pieces:
                if cut_after is not None and sent + len(piece) > cut_after:
                    self.wfile.write(piece[:cut_after - sent])
                    self.wfile.flush()
                    self.hang_up()
                    return f"cut response after {cut_after}"
                self.wfile.write(piece)
                sent += len(piece)
            return resp.status
        finally:
            conn.close()


class FaultProxy:
    """See the module docstring. ``host`` is ``127.0.0.1:PORT``; use it in image references."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.hits: list[tuple[str, str, object, dict]] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def add(self, method: str, pattern: str, fault: Fault, *, times: int | None = None, skip: int = 0) -> Rule:
        rule = Rule(method, pattern, fault, times, skip)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for rule in self.rules:
                if rule.take(method, path):
                    return rule.fault
        return None

    def record(self, method: str, path: str, outcome, headers: dict) -> None:
        with self._lock:
            self.hits.append((method, path, outcome, headers))

    def requests(self, method: str, pattern: str) -> list[tuple[str, str, object, dict]]:
        """The recorded hits of ``method`` whose path (query excluded) matches ``pattern``."""
        rx = re.compile(pattern)
        with self._lock:
            return [h for h in self.hits if h[0] == method and rx.search(urlsplit(h[1]).path)]
