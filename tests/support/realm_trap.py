"""The token-realm SSRF, staged on loopback: a registry that sends clients to a realm of its choosing, and a
listener where that realm points that records whether anybody came.

``ChallengingRegistry(realm)`` is a fake (a real ``docker-registry`` cannot be told to name an arbitrary
realm): every request gets ``401`` with ``WWW-Authenticate: Bearer realm="<realm>",service=…,scope=…``, as a
hostile or misconfigured registry would answer; ``.requests`` records (method, path, Authorization).
``Redirector(target)`` (a fake token endpoint) answers every GET with a 302 to ``target`` and counts ``.hits``.
``ConnectionWitness(host, port)`` is a plain listening socket standing in for a cloud metadata service:
``.connections`` counts every TCP connection it accepted (a GET would need one), ``.received`` keeps the bytes.
"""
from __future__ import annotations

import http.server
import json
import socket
import threading


class ChallengingRegistry:
    def __init__(self, realm: str, host: str = "127.0.0.1"):
        self.realm = realm
        self.requests: list[tuple[str, str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _challenge(self):
                owner.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
                repo = self.path.split("/v2/", 1)[-1].split("/manifests/")[0].split("/blobs/")[0]
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Bearer realm="{owner.realm}",service="trap",'
                                                     f'scope="repository:{repo}:pull"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body.encode())

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _challenge  # noqa: N815 (http.server's naming)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.host = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="challenging-registry", daemon=True)

    def start(self) -> "ChallengingRegistry":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Redirector:
    def __init__(self, target: str, host: str = "127.0.0.1"):
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                owner.hits += 1
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.host = f"{host}:{self._server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class ConnectionWitness:
    """Listens on ``host:port`` (``port=0``: any free one; a taken port falls back to a free one)."""

    def __init__(self, host: str, port: int = 0):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.host = f"{host}:{self._sock.getsockname()[1]}"
        self.connections = 0
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="connection-witness", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1)
                try:
                    self.received += conn.recv(65536)
                except OSError:
                    pass

    def start(self) -> "ConnectionWitness":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
