"""The declarative option schema drivers use for converter.driver.config."""
import pytest

from acceleration_sdk.errors import DriverError
from acceleration_sdk.options import Option, OptionSchema


def schema(check=None):
    return OptionSchema(
        Option("mode", str, "fast", choices=("fast", "small"), help="what to optimise"),
        Option("level", int, lambda o: 1 if o["mode"] == "fast" else 9,
               range=lambda o: (1, 3) if o["mode"] == "fast" else (1, 22), help="effort"),
        Option("verify", bool, True),
        Option("paths", list, ()),
        check=check,
    )


def test_defaults_fill_in_declaration_order():
    assert schema().validate({}) == {"mode": "fast", "level": 1, "verify": True, "paths": ()}
    assert schema().validate({"mode": "small"})["level"] == 9


def test_go_style_strings_are_parsed():
    got = schema().validate({"mode": "small", "level": "0x10", "verify": "False", "paths": "/a, /b\n/c"})
    assert got == {"mode": "small", "level": 16, "verify": False, "paths": ("/a", "/b", "/c")}


@pytest.mark.parametrize("given, key, reason", [
    ({"mod": "x"}, "mod", "unknown option for toy (allowed: mode, level, verify, paths)"),
    ({"mode": "tiny"}, "mode", "expected one of fast, small, got 'tiny'"),
    ({"level": 4}, "level", "expected 1..3, got 4"),  # the range follows mode
    ({"level": True}, "level", "expected a number, got True"),
    ({"level": 2.5}, "level", "expected a number, got 2.5"),
    ({"verify": "yes"}, "verify", "expected true or false, got 'yes'"),
    ({"paths": [1]}, "paths", "expected a list of strings, got [1]"),
    ({"mode": ["fast"]}, "mode", "expected a string, got list"),
])
def test_errors_name_the_full_key_path(given, key, reason):
    with pytest.raises(DriverError) as info:
        schema().validate(given, path="converter.driver.config", driver="toy")
    assert (info.value.path, info.value.reason) == (f"converter.driver.config.{key}", reason)
    assert str(info.value) == f"converter.driver.config.{key}: {reason}"


def test_check_hook_sees_the_whole_mapping():
    def check(values, path):
        if values["mode"] == "fast" and values["paths"]:
            raise DriverError(f"{path}.paths: not with mode fast")
        return {**values, "checked": True}

    assert schema(check).validate({"mode": "small", "paths": ["/x"]})["checked"] is True
    with pytest.raises(DriverError, match=r"^converter.driver.config.paths: not with mode fast$"):
        schema(check).validate({"paths": ["/x"]})


def test_describe_is_one_line_per_option():
    lines = schema().describe()
    assert lines[0] == "mode (str, default fast, one of fast|small): what to optimise"
    assert lines[1].startswith("level (int, default: see help): effort")
    assert lines[2] == "verify (bool, default true)"


def test_bad_declarations_fail_early():
    with pytest.raises(TypeError):
        Option("x", dict)
    with pytest.raises(ValueError, match="duplicate"):
        OptionSchema(Option("x", int), Option("x", str))


def test_a_lines_list_splits_a_string_at_newlines_only():
    schema = OptionSchema(Option("paths", list, (), lines=True), Option("names", list, ()))
    got = schema.validate({"paths": "/a,b\n /c \n\n", "names": "x,y\nz"})
    assert got == {"paths": ("/a,b", "/c"), "names": ("x", "y", "z")}
