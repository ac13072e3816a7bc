"""Image references: parse, normalise, and the tag rules of acceld.

Grammar (distribution/reference): ``[host[:port]/]path[:tag][@digest]``. The first path component is a
host when it contains a ``.`` or ``:`` or is ``localhost``; otherwise the host is ``docker.io`` and a
one-component path gets ``library/`` (``nginx`` -> ``docker.io/library/nginx:latest``).
"""
from __future__ import annotations

import dataclasses
import re

from .errors import ReferenceError_

DEFAULT_HOST = "docker.io"
DEFAULT_TAG = "latest"

# The distribution spec's grammar (distribution/reference, OCI image-spec "Digests"), matched with
# ``fullmatch`` over ASCII classes only: ``$`` would accept a trailing newline (a forged log line) and
# ``\w`` any Unicode letter or digit.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # at most 128 characters
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                   r"(?::[0-9]{1,5})?|\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?")
# The registered algorithms and their exact lengths; registries verify nothing else.
_DIGESTS = {"sha256": re.compile(r"sha256:[a-f0-9]{64}"), "sha512": re.compile(r"sha512:[a-f0-9]{128}")}
MAX_NAME = 255  # host/repository, distribution's NameTotalLengthMax
# The longest reference the grammar allows (name, ":" tag, "@sha512:" digest); longer input is refused
# before any expression runs on it, and an error message never echoes more than SHOWN of it.
MAX_REFERENCE = MAX_NAME + 1 + 128 + 1 + 7 + 128
SHOWN = 120


def is_digest(text: str) -> bool:
    """``algorithm:hex`` of a registered algorithm with its exact length (sha256: 64, sha512: 128 hex)."""
    if not isinstance(text, str):
        return False
    pattern = _DIGESTS.get(text.partition(":")[0])
    return pattern is not None and pattern.fullmatch(text) is not None


def _shown(text: str) -> str:
    """``text`` as an error message may quote it: repr (escapes control characters and lone surrogates), cut."""
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + "...")


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised image reference. ``tag`` and ``digest`` may both be set."""

    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``host/repository`` without tag or digest."""
        return f"{self.host}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host to talk to: Docker Hub's API lives at registry-1.docker.io."""
        return "registry-1.docker.io" if self.host == DEFAULT_HOST else self.host

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def object(self) -> str:
        """What to put after ``/manifests/``: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> "Reference":
        if not _TAG.fullmatch(tag):
            raise ReferenceError_(f"invalid tag {_shown(tag)}", reference=str(self))
        return dataclasses.replace(self, tag=tag, digest="")

    def with_digest(self, digest: str) -> "Reference":
        return dataclasses.replace(self, tag="", digest=digest)


def parse(text: str) -> Reference:
    """Parse and normalise ``text``; raise :class:`ReferenceError_` naming it when it does not parse."""
    if not isinstance(text, str) or not text.strip():
        raise ReferenceError_("empty image reference", reference=str(text)[:SHOWN])
    raw = text.strip()
    if len(raw) > MAX_REFERENCE:
        raise ReferenceError_(f"invalid image reference {_shown(raw)}: longer than {MAX_REFERENCE} characters",
                              reference=raw[:SHOWN])
    if "://" in raw:
        raise ReferenceError_(f"invalid image reference {_shown(raw)}: a reference has no scheme", reference=raw)
    rest, digest = raw, ""
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not is_digest(digest):
            raise ReferenceError_(f"invalid image reference {_shown(raw)}: bad digest {_shown(digest)} "
                                  f"(sha256:<64 hex> or sha512:<128 hex>)", reference=raw)
    tag = ""
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise ReferenceError_(f"invalid image reference {_shown(raw)}: bad tag {_shown(tag)}", reference=raw)
    parts = rest.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost" or parts[0] != parts[0].lower()):
        host, path = parts[0], parts[1:]
        if not _HOST.fullmatch(host):
            raise ReferenceError_(f"invalid image reference {_shown(raw)}: bad host {_shown(host)}", reference=raw)
    else:
        host, path = DEFAULT_HOST, parts
    if host == DEFAULT_HOST and len(path) == 1:
        path = ["library"] + path
    for comp in path:
        if not _PATH_COMPONENT.fullmatch(comp):
            raise ReferenceError_(f"invalid image reference {_shown(raw)}: bad repository component {_shown(comp)}",
                                  reference=raw)
    repository = "/".join(path)
    if len(host) + 1 + len(repository) > MAX_NAME:
        raise ReferenceError_(f"invalid image reference {_shown(raw)}: name longer than {MAX_NAME} characters",
                              reference=raw)
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(host=host, repository=repository, tag=tag, digest=digest)


def target_for(source: Reference | str, tag_suffix: str) -> Reference:
    """The converted image's reference: same repository, tag + suffix; digest-only -> ``latest<suffix>``."""
    ref = parse(source) if isinstance(source, str) else source
    base = ref.tag or DEFAULT_TAG
    return ref.with_tag(base + tag_suffix)


def is_converted(source: Reference | str, tag_suffix: str) -> bool:
    """True when the source's tag already ends with the suffix: converting it again would loop."""
    ref = parse(source) if isinstance(source, str) else source
    return bool(tag_suffix) and bool(ref.tag) and ref.tag.endswith(tag_suffix)
