"""One requests.Session to the registries: scheme per host, retries, the 401 dance, error translation.

This module is the boundary where third-party errors (requests, urllib3, ssl) become the SDK's
:mod:`acceleration_sdk.errors`. Policies:

- Scheme: ``http://`` for loopback hosts (``localhost``, ``127.0.0.0/8``, ``[::1]``, as docker does by
  default); for a host configured ``insecure: true``, ``https://`` without verification, falling back to
  ``http://`` only when that host refuses TLS, remembered for that host alone; ``https://`` otherwise.
- Retries: urllib3 ``Retry`` on the session for idempotent methods (connection errors, 429 with
  ``Retry-After``, 5xx); writes are retried as whole operations by the caller (:meth:`Transport.retrying`).
- Auth: see :mod:`.auth`. A request is sent once, and once more after a 401 challenge.
"""
from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from typing import Callable, Iterable
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .. import __version__
from ..errors import AuthError, NotFoundError, RegistryError, UnreachableError
from ..reference import Reference
from .auth import Authenticator, RealmPolicy, pick_challenge
from .credentials import CredentialStore

log = logging.getLogger("acceleration_sdk.registry")

USER_AGENT = f"acceld/{__version__} (acceleration_sdk; python-requests)"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
MAX_RETRY_AFTER = 60.0  # a registry asking for more than a minute is treated as asking for a minute
MAX_ERROR_BODY = 64 << 10  # distribution's error documents are small; more is not an error document
MAX_MESSAGE = 300  # characters of a registry's message kept in ours (messages stay one line)
MAX_CODE = 64  # a distribution error code is a short upper-case word (BLOB_UNKNOWN)

# The exceptions a request or a streamed body can raise on the wire.
WIRE_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ssl.SSLError)


class _CappedRetry(Retry):
    """urllib3 ``Retry`` that honours ``Retry-After`` but never sleeps longer than ``MAX_RETRY_AFTER``."""

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), MAX_RETRY_AFTER)


def new_session(retries: int = 5, backoff: float = 0.5, pool_size: int = 16) -> requests.Session:
    """A session with retrying adapters mounted for http and https."""
    retry = _CappedRetry(total=retries, connect=retries, read=retries, status=retries, other=0,
                         backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
                         allowed_methods=IDEMPOTENT_METHODS, respect_retry_after_header=True,
                         raise_on_status=False, raise_on_redirect=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def split_host(host: str) -> str:
    """``[::1]:5000`` -> ``::1``; ``localhost:5000`` -> ``localhost``."""
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` literals (with or without a port); no DNS."""
    name = split_host(host).lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), MAX_RETRY_AFTER))


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, urllib3 ``reason``s, exception args)."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if any(e is seen for seen in out):
            continue
        out.append(e)
        todo.extend(x for x in (e.__cause__, e.__context__, getattr(e, "reason", None)) if isinstance(x, BaseException))
        todo.extend(x for x in e.args if isinstance(x, BaseException))
    return out


def wire_reason(exc: BaseException) -> str:
    """A short, secret-free reason for a wire error: 'connection refused', 'timed out', ..."""
    chain = _chain(exc)
    # The most specific cause first: urllib3 files a refused connection under its timeout errors.
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "host name does not resolve"
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return "TLS certificate not trusted"
    for e in chain:
        if isinstance(e, (requests.exceptions.SSLError, ssl.SSLError, urllib3.exceptions.SSLError)):
            return "TLS handshake failed"
        if isinstance(e, (ConnectionResetError, BrokenPipeError)):
            return "connection reset"
        if isinstance(e, urllib3.exceptions.IncompleteRead) or "IncompleteRead" in type(e).__name__:
            return "connection closed before the whole body arrived"
        if isinstance(e, http.client.BadStatusLine):  # (after the reset check: RemoteDisconnected is both)
            return "the answer was not HTTP"
    for e in chain:
        if isinstance(e, (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)):
            return "timed out"
    return f"connection failed ({type(exc).__name__})"


def encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (a lone surrogate from a JSON ``"\\ud800"``) replaced by ``?``.

    A registry's words end up in a task's reason (a database column) and in log lines: either
    refuses such a string, and a worker that crashes while recording a failure is retried as if the
    conversion had been interrupted.
    """
    return text.encode("utf-8", "replace").decode("utf-8")


def _one_line(text: str, secrets: Iterable[str] = ()) -> str:
    text = " ".join(encodable(str(text)).split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def read_error(resp: requests.Response) -> tuple[str, str, object]:
    """``(code, message, detail)`` of a distribution error document; empty strings when there is none."""
    try:
        body = resp.raw.read(MAX_ERROR_BODY, decode_content=True) if resp.raw is not None else b""
    except WIRE_ERRORS:
        body = b""
    finally:
        resp.close()
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return "", "", None
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return (_one_line(str(first.get("code") or ""))[:MAX_CODE], encodable(str(first.get("message") or "")),
                first.get("detail"))
    return "", "", None


class Transport:
    """Sends requests for a :class:`Reference`: base URL, auth header, one 401 retry, error translation."""

    def __init__(self, session: requests.Session, credentials: CredentialStore, *, timeout: float,
                 retries: int, backoff: float):
        self.session = session
        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.auth = Authenticator(session, timeout)
        self._schemes: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transport(schemes={dict(self._schemes)!r})"

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first): the registry's ``Retry-After``
        when it sent one, else exponential backoff; never more than ``MAX_RETRY_AFTER``. The SDK's one
        backoff rule (idempotent requests get the same from urllib3's ``Retry``, see ``new_session``)."""
        wait = self.backoff * 2 ** (retry - 1) if retry_after is None else retry_after
        return min(max(wait, 0.0), MAX_RETRY_AFTER)

    # ------------------------------------------------------------------ scheme and URLs

    def scheme(self, host: str) -> str:
        with self._lock:
            if host in self._schemes:
                return self._schemes[host]
        return "http" if is_loopback(host) else "https"

    def base_url(self, ref: Reference) -> str:
        return f"{self.scheme(ref.api_host)}://{ref.api_host}"

    def url(self, ref: Reference, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.base_url(ref) + path_or_url

    def realm_policy(self, ref: Reference) -> RealmPolicy:
        """Where ``ref``'s registry may send us for tokens (see :class:`.auth.RealmPolicy`); loopback counts
        as insecure, as it does for docker."""
        host = ref.api_host
        insecure = self.credentials.insecure(ref.host) or is_loopback(host)
        return RealmPolicy(host, self.credentials.token_realms(ref.host),
                           plain_http=self.scheme(host) == "http" and insecure, config_key=ref.host)

    def secrets(self, ref: Reference) -> tuple[str, ...]:
        creds = self.credentials.for_host(ref.host)
        return creds.secrets if creds else ()

    # ------------------------------------------------------------------ requests

    def request(self, method: str, ref: Reference, path_or_url: str, *, scopes: tuple[str, ...], what: str,
                headers: dict | None = None, body: bytes | Callable[[], object] | None = None,
                allow_redirects: bool = True) -> requests.Response:
        """Send; on 401 follow the challenge and send once more. Returns the response whatever its status,
        except that a 401 after the auth flow raises :class:`AuthError`. The body is not read yet: the
        caller reads (bounded) what it needs and closes the response.

        ``body`` is bytes or a callable returning a fresh body (file-like) for each send.
        """
        host = ref.api_host
        creds = self.credentials.for_host(ref.host)
        verify = not self.credentials.insecure(ref.host)
        authz = self.auth.header(host, scopes, creds, verify=verify, what=what, reference=str(ref),
                                 realms=self.realm_policy(ref))
        resp = self._send(method, ref, path_or_url, headers, body, authz, allow_redirects, what)
        if resp.status_code != 401:
            return resp
        challenge = pick_challenge(resp.headers.get("WWW-Authenticate", ""))
        if challenge is None or (challenge.scheme == "basic" and (creds is None or authz is not None)):
            raise self.error(resp, ref, what)
        authz = self.auth.header(host, scopes, creds, verify=verify, what=what, reference=str(ref),
                                 challenge=challenge, refused=authz, realms=self.realm_policy(ref))
        resp.close()
        resp = self._send(method, ref, path_or_url, headers, body, authz, allow_redirects, what)
        if resp.status_code == 401:
            raise self.error(resp, ref, what)
        return resp

    def _send(self, method, ref, path_or_url, headers, body, authz, allow_redirects, what):
        host = ref.api_host
        url = self.url(ref, path_or_url)
        hdrs = dict(headers or {})
        if authz and urlsplit(url).netloc == host:  # an absolute Location on another host gets no credentials
            hdrs["Authorization"] = authz
        verify = not self.credentials.insecure(ref.host)
        for attempt in (1, 2):
            data = body() if callable(body) else body
            try:
                resp = self.session.request(method, url, headers=hdrs, data=data, timeout=self.timeout,
                                            verify=verify, stream=True, allow_redirects=allow_redirects)
            except requests.exceptions.SSLError as exc:
                if attempt == 1 and not verify and url.startswith(f"https://{host}/"):
                    # insecure: true and the host refuses TLS: plain HTTP for this host only.
                    log.debug("%s refuses TLS; using plain HTTP for this host only", host)
                    with self._lock:
                        self._schemes[host] = "http"
                    url = "http://" + url[len("https://"):]
                    continue
                raise UnreachableError(f"{what}: cannot reach {host}: {wire_reason(exc)}",
                                       reference=str(ref)) from exc
            except requests.RequestException as exc:
                raise UnreachableError(f"{what}: cannot reach {host}: {wire_reason(exc)}",
                                       reference=str(ref)) from exc
            finally:
                close = getattr(data, "close", None)
                if callable(body) and close is not None:
                    close()
            log.debug("%s %s%s -> %s", method, host, urlsplit(resp.url).path, resp.status_code)
            return resp
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ errors

    def error(self, resp: requests.Response, ref: Reference, what: str, *,
              unknown: str = "") -> RegistryError:
        """The SDK exception for a failed response; reads (a bounded part of) the body and closes it."""
        status = resp.status_code
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        code, message, detail = read_error(resp)
        secrets = self.secrets(ref)
        message = _one_line(message, secrets)
        target = str(ref)
        if status in (401, 403):
            reason = ", ".join(x for x in (message, code, f"HTTP {status}") if x)
            hint = "" if self.credentials.for_host(ref.host) else f"; no credentials are configured for {ref.host}"
            exc: RegistryError = AuthError(
                f"{what}: {ref.api_host} denied access to {ref.repository} ({reason}){hint}",
                reference=target, status=status, registry_code=code)
        elif status == 404:
            exc = NotFoundError(f"{message or unknown or 'not found'}: {target}", reference=target,
                                status=status, registry_code=code)
        else:
            reason = f"{message} ({code}, HTTP {status})" if message else f"HTTP {status} {resp.reason or ''}".strip()
            exc = RegistryError(f"{what}: {ref.api_host} answered {reason}", reference=target,
                                status=status, registry_code=code)
        exc.detail = detail
        exc.retry_after = retry_after
        return exc

    # ------------------------------------------------------------------ whole-operation retries

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, AuthError):
            return False
        if isinstance(exc, UnreachableError):
            return True
        if isinstance(exc, RegistryError):
            return exc.status in RETRY_STATUSES or exc.registry_code in ("BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID")
        return False

    def retrying(self, op: Callable[[int], object], what: str):
        """Run ``op(attempt)`` up to ``retries + 1`` times while it fails with a retryable error."""
        attempt = 0
        while True:
            try:
                return op(attempt)
            except RegistryError as exc:
                if attempt >= self.retries or not self.retryable(exc):
                    raise
                attempt += 1
                delay = self.delay(attempt, getattr(exc, "retry_after", None))
                log.debug("%s failed (%s); attempt %d of %d in %.1fs", what, exc.code, attempt + 1,
                          self.retries + 1, delay)
                time.sleep(delay)
