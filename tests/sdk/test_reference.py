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
