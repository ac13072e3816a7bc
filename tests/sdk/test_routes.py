"""converter.routes: parsing (refusals name the key path), matching, placeholders, loop prevention."""
from __future__ import annotations

import pytest

from acceleration_sdk import config, reference, routes
from acceleration_sdk.errors import ConfigError

HOST = "harbor.example.com"
OTHER = "mirror.example.com:5000"


def load(routes_raw, **converter):
    return config.from_dict({"provider": {"source": {HOST: {}, OTHER: {}}},
                             "converter": {"routes": routes_raw, **converter}})


def ref(text):
    return reference.parse(text)


def test_no_routes_is_acceld_behaviour():
    cfg = config.from_dict({"converter": {"rules": [{"tag_suffix": "-esgz"}]}})
    assert cfg.converter.routes == () and cfg.converter.tag_suffix == "-esgz"


def test_issue_example_parses_with_route_driver():
    cfg = load([{"name": "releases-zstd", "match": {"repository": ["library/*"], "tag": ["v*", "latest"],
                                                      "exclude_tag": ["*-debug"]},
                 "target": "{host}/{project}-accel/{rest}:{tag}-zc",
                 "driver": {"type": "estargz", "config": {"compression": "zstdchunked"}}},
                {"name": "all-esgz", "target": "{host}/{path}:{tag}-esgz"}])
    first, second = cfg.converter.routes
    assert first.name == "releases-zstd" and first.driver.config["compression"] == "zstdchunked"
    assert second.driver is None
    assert first.match.tag == ("v*", "latest") and first.match.exclude_tag == ("*-debug",)


def test_placeholders_render_every_part():
    route = routes.Route(name="r", target="{host}/x-{project}/{rest}/{name}:{tag}-{project}")
    out = route.render(ref(f"{OTHER}/team/tools/nginx:v1"))
    assert str(out) == f"{OTHER}/x-team/tools/nginx/nginx:v1-team"
    whole = routes.Route(name="p", target=f"{OTHER}/{{path}}:{{tag}}").render(ref(f"{HOST}/library/nginx"))
    assert str(whole) == f"{OTHER}/library/nginx:latest"  # no tag pushed: latest


def test_rest_of_a_one_component_repository_is_a_clear_error():
    route = routes.Route(name="r", target="{host}/{project}-accel/{rest}:{tag}")
    with pytest.raises(reference.ReferenceError_, match="route 'r' gives no valid target"):
        route.render(ref("localhost:5000/nginx:v1"))


@pytest.mark.parametrize("pushed,expected", [
    (f"{HOST}/library/nginx:v1", True),
    (f"{HOST}/library/nginx:latest", True),
    (f"{HOST}/library/nginx:v1-debug", False),  # excluded
    (f"{HOST}/library/nginx:dev", False),  # tag not matched
    (f"{HOST}/team/nginx:v1", False),  # repository not matched
    (f"{HOST}/library/sub/nginx:v1", True),  # fnmatch's * crosses /
])
def test_match_all_present_keys(pushed, expected):
    m = routes.RouteMatch(repository=("library/*",), tag=("v*", "latest"), exclude_tag=("*-debug",))
    assert m.matches(ref(pushed)) is expected


def test_no_match_keys_match_everything():
    assert routes.RouteMatch().matches(ref(f"{HOST}/any/thing:x"))


def test_loop_prevention_tag_and_repository():
    cfg = load([{"name": "accel", "target": "{host}/{project}-accel/{rest}:{tag}-nydus"},
                {"name": "esgz", "target": "{host}/{path}:{tag}-esgz"},
                {"name": "mirror", "target": f"{OTHER}/{{path}}:{{tag}}"}])
    rs = cfg.converter.routes
    # each route's own output
    for route in rs:
        assert routes.output_reason(rs, route.render(ref(f"{HOST}/library/nginx:v1")))
    # anything pushed into a target repository (another project, another host) is output too
    assert "accel" in routes.output_reason(rs, ref(f"{HOST}/library-accel/nginx:manual"))
    assert "mirror" in routes.output_reason(rs, ref(f"{OTHER}/team/app:v2"))
    # a target tag in the source repository: only that tag
    assert "esgz" in routes.output_reason(rs, ref(f"{HOST}/library/nginx:v3-esgz"))
    assert routes.output_reason(rs, ref(f"{HOST}/library/nginx:v3")) == ""


@pytest.mark.parametrize("raw,path,message", [
    ({"name": "a", "target": "{host}/{path}:{tag}-x", "bogus": 1}, "converter.routes[0].bogus", "unknown key"),
    ({"target": "{host}/{path}:{tag}-x"}, "converter.routes[0].name", "expected a name"),
    ({"name": "a b", "target": "{host}/{path}:{tag}-x"}, "converter.routes[0].name", "expected a name"),
    ({"name": "a", "target": "{host}/{path}:{tag}-{flavour}"}, "converter.routes[0].target", "unknown placeholder"),
    ({"name": "a", "target": "nowhere.example.com/{path}:{tag}"}, "converter.routes[0].target",
     "not a configured registry"),
    ({"name": "a", "target": "{project}.example.com/{path}:{tag}"}, "converter.routes[0].target", "must start with"),
    ({"name": "a", "target": "{host}/{path}"}, "converter.routes[0].target", "needs a tag"),
    ({"name": "a", "target": "{host}/{path}:{tag}"}, "converter.routes[0].target", "overwrite the source"),
    ({"name": "a", "target": "{host}/{path}:{tag}-X!"}, "converter.routes[0].target", "valid reference"),
    ({"name": "a", "target": "{host}/{path}:{tag}-x", "match": {"tag": ["v[1-"]}},
     "converter.routes[0].match.tag[0]", "unbalanced"),
    ({"name": "a", "target": "{host}/{path}:{tag}-x", "match": {"tag": "a/b"}},
     "converter.routes[0].match.tag[0]", "cannot contain"),
    ({"name": "a", "target": "{host}/{path}:{tag}-x", "match": {"repository": ["h.io/x:1"]}},
     "converter.routes[0].match.repository[0]", "without host"),
    ({"name": "a", "target": "{host}/{path}:{tag}-x", "match": {"tags": ["v*"]}},
     "converter.routes[0].match.tags", "unknown key"),
    ({"name": "a", "target": "{host}/{path}:{tag}-x", "driver": {"type": "no-such-format"}},
     "converter.routes[0].driver.type", "unknown driver"),
    ({"name": "a", "target": "{host}/{path}:{tag}-x", "driver": {"type": "estargz", "config": {"compression": "lz4"}}},
     "converter.routes[0].driver.config.compression", ""),
])
def test_refusals_name_the_key_path(raw, path, message):
    with pytest.raises(ConfigError) as info:
        load([raw])
    assert path in str(info.value) and message in str(info.value)


def test_two_routes_writing_one_target_are_refused():
    with pytest.raises(ConfigError, match=r"converter\.routes\[1\]\.target.*same target as route 'a'"):
        load([{"name": "a", "target": "{host}/{path}:{tag}-x"},
              {"name": "b", "target": "{host}/{project}/{rest}:{tag}-x"}])  # the same thing, spelled otherwise


def test_duplicate_names_are_refused():
    with pytest.raises(ConfigError, match=r"converter\.routes\[1\]\.name.*used twice"):
        load([{"name": "a", "target": "{host}/{path}:{tag}-x"}, {"name": "a", "target": "{host}/{path}:{tag}-y"}])


def test_routes_must_be_a_list():
    with pytest.raises(ConfigError, match=r"converter\.routes"):
        load({"name": "a"})
