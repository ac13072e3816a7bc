"""The registry auth flow: ``WWW-Authenticate`` challenges, scopes, bearer tokens and their cache.

A registry answers 401 with ``Bearer realm=…,service=…,scope=…`` (distribution's token auth, Harbor) or
``Basic realm=…`` (htpasswd). For Bearer we GET the realm with ``service`` and one ``scope`` parameter per
scope, with Basic credentials when we have them, and read ``token`` or ``access_token`` from the JSON.
Tokens are cached per (host, scopes) until shortly before they expire. Tokens and passwords never reach a
message or a log line.

The realm is chosen by the registry, so it is checked before anything is sent there (:class:`RealmPolicy`):
it must be on the registry's own host name (any port) or on a host listed in
``provider.source.<host>.token_realms``, else a registry could make the worker GET any URL (a cloud metadata
service, a port on loopback). Credentials go to a plain-HTTP realm only when the registry itself is plain
HTTP and insecure. Redirects from the token service are followed only to hosts the same rules allow.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from typing import Iterable
from urllib.parse import urlsplit

import requests

from ..errors import AuthError, RegistryError, TokenRealmError, UnreachableError
from .credentials import Credentials

log = logging.getLogger("acceleration_sdk.registry")

# Docker's token spec: "expires_in … defaults to 60 seconds"; a token is used until this margin before expiry.
DEFAULT_TOKEN_LIFETIME = 60
EXPIRY_MARGIN = 10
MAX_TOKEN_RESPONSE = 1 << 20  # a token response is a small JSON document
MAX_TOKEN_REDIRECTS = 3  # token services answer directly; a few hops allow a moved endpoint, not a loop
# Registries whose token service lives on another host by design: Docker Hub's is auth.docker.io.
BUILTIN_REALM_HOSTS = {"registry-1.docker.io": ("auth.docker.io",)}

_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
_SCHEME = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_.-]*)(?=\s|$|,)")


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge; ``scheme`` is lower case (``bearer`` or ``basic``)."""

    scheme: str
    params: dict = dataclasses.field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(s for s in self.params.get("scope", "").split(" ") if s)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value that may hold several challenges (RFC 7235)."""
    out: list[Challenge] = []
    pos, text = 0, header or ""
    while pos < len(text):
        m = _SCHEME.match(text, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            p = _PARAM.match(text, pos)
            if not p:
                break
            value = p.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[p.group(1).lower()] = value
            pos = p.end()
        out.append(Challenge(scheme, params))
    return out


def pick_challenge(header: str) -> Challenge | None:
    """Bearer over Basic; ``None`` when there is no challenge we speak."""
    challenges = parse_challenges(header)
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


def repository_scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Merge ``repository:a:pull`` and ``repository:a:push`` into ``repository:a:pull,push``; keep order."""
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            continue
        acts = merged.setdefault((kind, name), [])
        for action in actions.split(","):
            if action and action not in acts:
                acts.append(action)
    return tuple(f"{kind}:{name}:{','.join(acts)}" for (kind, name), acts in merged.items())


def _host_port(authority: str, scheme: str = "") -> tuple[str, int | None]:
    """``Auth.Example.com:8443`` -> ``("auth.example.com", 8443)``; the port defaults to the scheme's, if given."""
    parts = urlsplit("//" + authority)
    port = parts.port  # ValueError for a port that is not a number 0..65535
    if port is None and scheme:
        port = 443 if scheme == "https" else 80
    return (parts.hostname or "").lower(), port


@dataclasses.dataclass(frozen=True, slots=True)
class RealmPolicy:
    """Which token services a registry may send us to, and whether credentials may go there in the clear.

    ``registry`` is the host the requests go to (``host[:port]``), ``allowed`` the extra ``host`` or
    ``host:port`` entries of its ``token_realms``, ``plain_http`` true when the registry itself is reached
    over plain HTTP and is insecure (``insecure: true``, or on loopback, which docker treats as insecure too).
    """

    registry: str
    allowed: tuple[str, ...] = ()
    plain_http: bool = False
    config_key: str = ""  # the provider.source key, for the message

    def check(self, url: str, *, with_credentials: bool, what: str, reference: str) -> str:
        """``url``'s ``host:port`` when we may GET it (with credentials if ``with_credentials``); else raise."""
        parts = urlsplit(url)
        try:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(url)
            name, port = _host_port(parts.netloc.rpartition("@")[2], parts.scheme)
        except ValueError:
            raise TokenRealmError(f"{what}: {self.registry} sent a token realm that is not an http(s) URL",
                                  reference=reference) from None
        shown = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        if not self._allows(name, port):
            key = self.config_key or self.registry
            raise TokenRealmError(
                f"{what}: {self.registry} sent us to the token service on {shown}, which is neither "
                f"{self.registry} nor listed in provider.source.{key}.token_realms; not contacting it",
                reference=reference, realm_host=shown)
        if parts.scheme == "http" and with_credentials and not self.plain_http:
            raise TokenRealmError(
                f"{what}: {self.registry} sent us to the token service on {shown} over plain HTTP; "
                f"not sending credentials there (only an insecure plain-HTTP registry may do that)",
                reference=reference, realm_host=shown)
        return shown

    def _allows(self, name: str, port: int | None) -> bool:
        own, _ = _host_port(self.registry)
        if name == own:
            return True
        for entry in self.allowed + BUILTIN_REALM_HOSTS.get(own, ()):
            try:
                host, entry_port = _host_port(entry)
            except ValueError:
                continue
            if host == name and entry_port in (None, port):
                return True
        return False


class TokenCache:
    """Bearer tokens per (host, scopes), each kept until ``EXPIRY_MARGIN`` seconds before it expires."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the tokens
        return f"TokenCache({len(self._tokens)} tokens)"

    def get(self, host: str, scopes: tuple[str, ...]) -> str | None:
        with self._lock:
            entry = self._tokens.get((host, scopes))
            if entry is None:
                return None
            token, expires = entry
            if self._clock() >= expires:
                del self._tokens[(host, scopes)]
                return None
            return token

    def put(self, host: str, scopes: tuple[str, ...], token: str, lifetime: float) -> None:
        with self._lock:
            self._tokens[(host, scopes)] = (token, self._clock() + max(lifetime - EXPIRY_MARGIN, 1))

    def drop(self, host: str, scopes: tuple[str, ...]) -> None:
        with self._lock:
            self._tokens.pop((host, scopes), None)


class Authenticator:
    """Turns challenges into ``Authorization`` header values; remembers each host's challenge."""

    def __init__(self, session: requests.Session, timeout: float):
        self._session = session
        self._timeout = timeout
        self.tokens = TokenCache()
        self._challenges: dict[str, Challenge] = {}
        self._fetching: dict[tuple[str, tuple[str, ...]], threading.Lock] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Authenticator(hosts={sorted(self._challenges)})"

    def remember(self, host: str, challenge: Challenge) -> None:
        with self._lock:
            self._challenges[host] = challenge

    def known(self, host: str) -> Challenge | None:
        with self._lock:
            return self._challenges.get(host)

    def header(self, host: str, scopes: tuple[str, ...], creds: Credentials | None, *, verify: bool,
               what: str, reference: str = "", challenge: Challenge | None = None,
               refused: str | None = None, realms: RealmPolicy | None = None) -> str | None:
        """The header for a request needing ``scopes`` on ``host``, or ``None`` (anonymous, no challenge yet).

        After a 401, ``challenge`` is the one it carried (its scopes are asked for too) and ``refused``
        the header that was sent, which is not offered again. ``what`` (the operation and image) starts
        error messages; ``reference`` is the errors' ``.reference``. ``realms`` says where tokens may be
        fetched (default: ``host``'s own name only). Concurrent callers needing the same scopes share one
        token request.
        """
        if challenge is not None:
            self.remember(host, challenge)
        known = self.known(host)
        if known is None:
            return None
        if known.scheme == "basic":
            if creds is None:
                raise AuthError(f"{what}: {host} requires a login and no credentials are configured "
                                f"for {host}", reference=reference, status=401)
            return creds.basic()
        with self._key_lock(host, scopes):
            token = self.tokens.get(host, scopes)
            if token is not None and "Bearer " + token != refused:
                return "Bearer " + token
            wanted = merge_scopes(scopes + (challenge.scopes if challenge else ()))
            token, lifetime = self._fetch_token(host, known, wanted, creds, verify=verify, what=what,
                                               reference=reference, realms=realms or RealmPolicy(host))
            self.tokens.put(host, scopes, token, lifetime)
        return "Bearer " + token

    def _key_lock(self, host: str, scopes: tuple[str, ...]) -> threading.Lock:
        with self._lock:
            return self._fetching.setdefault((host, scopes), threading.Lock())

    def _fetch_token(self, host: str, challenge: Challenge, scopes: tuple[str, ...], creds: Credentials | None,
                     *, verify: bool, what: str, reference: str, realms: RealmPolicy) -> tuple[str, float]:
        url = challenge.realm
        netloc = realms.check(url, with_credentials=creds is not None, what=what, reference=reference)
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", s) for s in scopes)
        headers = {}
        if creds is not None:
            params.append(("account", creds.username))
            headers["Authorization"] = creds.basic()
        for _ in range(MAX_TOKEN_REDIRECTS + 1):
            try:
                resp = self._session.get(url, params=params, headers=headers, timeout=self._timeout,
                                         verify=verify, stream=True, allow_redirects=False)
            except requests.RequestException as exc:
                raise UnreachableError(f"{what}: cannot reach the token service {netloc} of {host} "
                                       f"({type(exc).__name__})", reference=reference) from exc
            if not resp.is_redirect:
                break
            # Each hop is checked like the realm itself; credentials stay with the realm's own host.
            target = requests.compat.urljoin(resp.url, resp.headers.get("Location", ""))
            resp.close()
            hop = realms.check(target, with_credentials=False, what=what, reference=reference)
            if hop != netloc or urlsplit(target).scheme != urlsplit(url).scheme:
                headers = {}
            url, params, netloc = target, None, hop
        else:
            raise RegistryError(f"{what}: the token service of {host} redirected more than "
                                f"{MAX_TOKEN_REDIRECTS} times", reference=reference)
        parts = urlsplit(url)
        with resp:
            log.debug("GET %s%s (token, scopes %s) -> %s", parts.netloc, parts.path, " ".join(scopes),
                      resp.status_code)
            if resp.status_code in (401, 403):
                who = f"as {creds.username!r}" if creds else "anonymously"
                raise AuthError(f"{what}: the token service of {host} refused to log in {who} "
                                f"(HTTP {resp.status_code})", reference=reference, status=resp.status_code)
            if resp.status_code != 200:
                raise RegistryError(f"{what}: the token service of {host} answered HTTP {resp.status_code}",
                                    reference=reference, status=resp.status_code)
            try:
                body = resp.raw.read(MAX_TOKEN_RESPONSE + 1, decode_content=True)
                data = json.loads(body) if len(body) <= MAX_TOKEN_RESPONSE else None
            except (ValueError, requests.RequestException, OSError) as exc:
                raise RegistryError(f"{what}: the token service of {host} sent an unreadable answer",
                                    reference=reference) from exc
        if not isinstance(data, dict):
            raise RegistryError(f"{what}: the token service of {host} sent no JSON object", reference=reference)
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: the token service of {host} sent no token", reference=reference)
        lifetime = data.get("expires_in")
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime < DEFAULT_TOKEN_LIFETIME:
            lifetime = DEFAULT_TOKEN_LIFETIME
        return token, float(lifetime)
