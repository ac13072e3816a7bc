"""A test token issuer that the real ``docker-registry`` (distribution 2.8) trusts.

How distribution 2.8 checks a token (registry/auth/token/token.go): ``iss`` must equal the configured
issuer, ``aud`` the configured service, ``exp``/``nbf`` hold with 60 s leeway, and the signing key comes from
the ``x5c`` header, whose leaf certificate must verify against ``rootcertbundle``. So the issuer makes an
ECDSA P-256 key and a self-signed certificate, writes the certificate as the bundle, and signs ES256 JWTs
with PyJWT carrying that certificate in ``x5c``.

The issuer is a small threaded HTTP server on loopback. ``GET /token?service=…&scope=…&scope=…`` with
Basic credentials grants each requested scope's actions only when the user may have them
(``users={"alice": "pw"}``, ``grants={"alice": "*"}`` or ``{"alice": {"repo": "pull"}}``); anonymous
callers get ``anonymous`` grants (none by default); wrong credentials get 401. Every request is recorded
in ``.requests`` (user, scopes) so tests can count token fetches.
"""
from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import threading
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVICE = "acceld-test-registry"
ISSUER = "acceld-test-issuer"


class TokenIssuer:
    def __init__(self, root, *, users: dict[str, str] | None = None, grants: dict | None = None,
                 anonymous: dict | str | None = None, lifetime: int = 300, field: str = "token",
                 bind: str = "127.0.0.1"):
        self.root = os.fspath(root)
        self.bind = bind  # another loopback address (127.0.0.3) puts the issuer on a host of its own
        self.users = dict(users or {})
        self.grants = dict(grants if grants is not None else {u: "*" for u in self.users})
        self.anonymous = anonymous
        self.lifetime = lifetime
        self.field = field  # "token", "access_token" or "both": which key the JSON answer uses
        self.requests: list[tuple[str, tuple[str, ...]]] = []
        self.issued: list[str] = []
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = _self_signed(self._key)
        self.bundle_path = os.path.join(self.root, "token-root.pem")
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def realm(self) -> str:
        assert self._server is not None, "start() the issuer first"
        return f"http://{self.bind}:{self._server.server_address[1]}/token"

    def start(self) -> "TokenIssuer":
        os.makedirs(self.root, exist_ok=True)
        with open(self.bundle_path, "wb") as fh:
            fh.write(self._cert.public_bytes(serialization.Encoding.PEM))
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                issuer._handle(self)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((self.bind, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="token-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def registry_auth_config(self) -> dict:
        """The registry's ``auth.token`` section."""
        return {"realm": self.realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": self.bundle_path}

    def count(self, scope_part: str = "") -> int:
        """Token requests so far, optionally only those asking for a scope containing ``scope_part``."""
        with self._lock:
            return sum(1 for _, scopes in self.requests if not scope_part or any(scope_part in s for s in scopes))

    # ------------------------------------------------------------------ the endpoint
    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        if url.path != "/token":
            return _reply(req, 404, {"details": "not found"})
        query = parse_qs(url.query)
        user = self._authenticate(req.headers.get("Authorization", ""))
        scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
        with self._lock:
            self.requests.append((user or "", scopes))
        if user is None:
            return _reply(req, 401, {"details": "incorrect username or password"},
                          {"WWW-Authenticate": 'Basic realm="acceld-test-issuer"'})
        if query.get("service", [""])[0] != SERVICE:
            return _reply(req, 400, {"details": "unknown service"})
        access = [a for a in (self._grant(user, s) for s in scopes) if a]
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "iat": now, "nbf": now - 5,
                  "exp": now + self.lifetime, "jti": uuid.uuid4().hex, "access": access}
        x5c = [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": x5c})
        with self._lock:
            self.issued.append(token)
        body = {"expires_in": self.lifetime,
                "issued_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        if self.field in ("token", "both"):
            body["token"] = token
        if self.field in ("access_token", "both"):
            body["access_token"] = token
        _reply(req, 200, body)

    def _authenticate(self, header: str) -> str | None:
        """The user name, ``""`` for anonymous, ``None`` for wrong credentials."""
        if not header:
            return ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user if user in self.users and self.users[user] == password else None

    def _grant(self, user: str, scope: str) -> dict | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        rule = self.grants.get(user) if user else self.anonymous
        if rule is None:
            return None
        if rule == "*":
            allowed = set(actions.split(","))
        elif isinstance(rule, dict):
            allowed = set(str(rule.get(name, "")).split(",")) - {""}
        else:
            allowed = set(str(rule).split(","))  # the same actions on every repository
        granted = [a for a in actions.split(",") if a in allowed]
        return {"type": kind, "name": name, "actions": granted} if granted else None


def _reply(req, status: int, body: dict, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    req.send_response(status)
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.end_headers()
    req.wfile.write(data)


def _self_signed(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acceld test token issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
