import pytest

from acceleration_sdk import reference
from acceleration_sdk.errors import ReferenceError_

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, expected", [
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.25", "docker.io/library/nginx:1.25"),
    ("user/app", "docker.io/user/app:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1"),
    ("harbor.example.com/library/nginx:latest", "harbor.example.com/library/nginx:latest"),
    (f"127.0.0.1:5000/app@{DIGEST}", f"127.0.0.1:5000/app@{DIGEST}"),
    (f"127.0.0.1:5000/app:v1@{DIGEST}", f"127.0.0.1:5000/app:v1@{DIGEST}"),
])
def test_parse_normalises(text, expected):
    assert str(reference.parse(text)) == expected


def test_host_keeps_port():
    ref = reference.parse("192.168.1.1:8443/library/nginx:latest")
    assert ref.host == "192.168.1.1:8443" and ref.repository == "library/nginx" and ref.tag == "latest"


@pytest.mark.parametrize("bad", ["", "   ", "UPPER/Case:tag", "a/b:bad tag", "http://x/y", "a/b@sha256:short",
                                 "a//b", "a/b:" + "t" * 200])
def test_parse_rejects(bad):
    with pytest.raises(ReferenceError_) as info:
        reference.parse(bad)
    assert info.value.code == "ERR_ILLEGAL_PARAMETER"


def test_target_for_adds_suffix():
    assert str(reference.target_for("h.io/a/nginx:latest", "-esgz")) == "h.io/a/nginx:latest-esgz"


def test_target_for_digest_only_source_uses_latest():
    assert str(reference.target_for(f"h.io/a/nginx@{DIGEST}", "-esgz")) == "h.io/a/nginx:latest-esgz"


def test_is_converted():
    assert reference.is_converted("h.io/a/nginx:latest-esgz", "-esgz")
    assert not reference.is_converted("h.io/a/nginx:latest", "-esgz")
    assert not reference.is_converted(f"h.io/a/nginx@{DIGEST}", "-esgz")


@pytest.mark.parametrize("bad", [
    "h.io/a/plain\n:latest",  # `$` matched before a trailing newline: a forged log line got through
    "h.io/a/plain:latest\nINFO forged",
    "h.io/a/app:lat\u00e9st\u0661",  # `\w` took any Unicode letter or digit
    "h.io/a/\u00e4pp:1",
    "h.io/a/app@sha256:" + "a" * 200_000,  # a 200 KB digest
    "h.io/a/app@sha256:" + "a" * 63, "h.io/a/app@sha256:" + "a" * 65, "h.io/a/app@sha256:" + "A" * 64,
    "h.io/a/app@sha512:" + "a" * 64, "h.io/a/app@md5:" + "a" * 32, "h.io/a/app@sha256:\ud800",
    "h.io/a/app:-leading-dash", "h.io/a/app:" + "t" * 129,
    "h.io/" + "/".join(["abcdefghi"] * 26),  # name over 255 characters
    "h\u0131.io/a/app:1", "h.io:99999999/a/app:1",
])
def test_parse_follows_the_distribution_grammar(bad):
    with pytest.raises(ReferenceError_) as info:
        reference.parse(bad)
    assert len(str(info.value)) < 400  # what it quotes is bounded
    str(info.value).encode("utf-8")  # and loggable: a lone surrogate is shown escaped


@pytest.mark.parametrize("good", [
    "h.io/a/app:" + "t" * 128, "h.io/a/app:_x.Y-9", "h.io/a/app@sha512:" + "a" * 128,
    "h.io/" + "/".join(["abcdefgh"] * 27) + ":1",  # name of 248 characters
    "[::1]:5000/a/app:1",
])
def test_the_grammar_still_takes_what_it_allows(good):
    assert str(reference.parse(good)) == good


def test_with_tag_refuses_what_parse_refuses():
    ref = reference.parse("h.io/a/app:1")
    with pytest.raises(ReferenceError_):
        ref.with_tag("1\n")
    with pytest.raises(ReferenceError_):
        ref.with_tag("t" * 129)
