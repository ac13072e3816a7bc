"""The registry auth flow: ``WWW-Authenticate`` challenges, scopes, bearer tokens and their cache.

A registry answers 401 with ``Bearer realm=…,service=…,scope=…`` (distribution's token auth, Harbor) or
``Basic realm=…`` (htpasswd). For Bearer we GET the realm with ``service`` and one ``scope`` parameter per
scope, with Basic credentials when we have them, and read ``token`` or ``access_token`` from the JSON.
Tokens are cached per (host, scopes) until shortly before they expire. Tokens and passwords never reach a
message or a log line.
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

from ..errors import AuthError, RegistryError, UnreachableError
from .credentials import Credentials

log = logging.getLogger("acceleration_sdk.registry")

# Docker's token spec: "expires_in … defaults to 60 seconds"; a token is used until this margin before expiry.
DEFAULT_TOKEN_LIFETIME = 60
EXPIRY_MARGIN = 10
MAX_TOKEN_RESPONSE = 1 << 20  # a token response is a small JSON document

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
               refused: str | None = None) -> str | None:
        """The header for a request needing ``scopes`` on ``host``, or ``None`` (anonymous, no challenge yet).

        After a 401, ``challenge`` is the one it carried (its scopes are asked for too) and ``refused``
        the header that was sent, which is not offered again. ``what`` (the operation and image) starts
        error messages; ``reference`` is the errors' ``.reference``. Concurrent callers needing the same
        scopes share one token request.
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
                                               reference=reference)
            self.tokens.put(host, scopes, token, lifetime)
        return "Bearer " + token

    def _key_lock(self, host: str, scopes: tuple[str, ...]) -> threading.Lock:
        with self._lock:
            return self._fetching.setdefault((host, scopes), threading.Lock())

    def _fetch_token(self, host: str, challenge: Challenge, scopes: tuple[str, ...], creds: Credentials | None,
                     *, verify: bool, what: str, reference: str) -> tuple[str, float]:
        realm = challenge.realm
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthError(f"{what}: {host} sent a token realm that is not an http(s) URL", reference=reference)
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", s) for s in scopes)
        headers = {}
        if creds is not None:
            params.append(("account", creds.username))
            headers["Authorization"] = creds.basic()
        try:
            resp = self._session.get(realm, params=params, headers=headers, timeout=self._timeout,
                                     verify=verify, stream=True)
        except requests.RequestException as exc:
            raise UnreachableError(f"{what}: cannot reach the token service {parts.netloc} of {host} "
                                   f"({type(exc).__name__})", reference=reference) from exc
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
