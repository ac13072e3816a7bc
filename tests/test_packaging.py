"""What the code imports is what the packaging installs: runtime pins in requirements.txt, test-only
packages in requirements-test.txt, and pyproject.toml's ``dependencies`` (SDK) / extra ``service``."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.test_import_graph import LAYERS, ROOT, module_files

SDK_LAYERS = ("acceleration_sdk", "drivers")
SERVICE_LAYERS = ("conversions", "acceld_project")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[\[<>=!~; ]", spec.strip(), maxsplit=1)[0])


def pinned(filename: str) -> dict[str, str]:
    """Package -> the line, for every requirement in the file (``-r`` includes not followed)."""
    out = {}
    for line in (ROOT / filename).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out[_requirement_name(line)] = line
    return out


def third_party_imports(layers) -> dict[str, set[str]]:
    """Distribution -> the modules of ``layers`` that import it (stdlib and our own packages left out)."""
    ours = set(LAYERS) | {"tests", "bench"}
    dists = packages_distributions()
    found: dict[str, set[str]] = {}
    for module, (path, _) in module_files(ROOT).items():
        if module.split(".")[0] not in layers:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ours:
                    continue
                for dist in dists.get(top, [f"<no installed distribution provides {top!r}>"]):
                    found.setdefault(_norm(dist), set()).add(module)
    return found


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _is_testing_kit(module: str) -> bool:
    """``acceleration_sdk.testing``: the conformance suite for driver authors, run under pytest (extra "testing")."""
    return module == "acceleration_sdk.testing" or module.startswith("acceleration_sdk.testing.")


def runtime_imports(layers) -> dict[str, set[str]]:
    found = {d: {m for m in mods if not _is_testing_kit(m)} for d, mods in third_party_imports(layers).items()}
    return {d: mods for d, mods in found.items() if mods}


def test_every_runtime_import_is_pinned_in_requirements_txt():
    runtime = pinned("requirements.txt")
    missing = {d: sorted(m) for d, m in runtime_imports(tuple(LAYERS)).items() if d not in runtime}
    assert not missing, f"imported by the code but not pinned in requirements.txt: {missing}"


def test_pyproject_declares_the_sdk_and_the_service_extra():
    project = _project()
    sdk = {_requirement_name(s) for s in project["dependencies"]}
    extras = {name: {_requirement_name(s) for s in specs} for name, specs in project["optional-dependencies"].items()}
    sdk_imports = runtime_imports(SDK_LAYERS)
    assert set(sdk_imports) <= sdk | extras["fast"], sdk_imports
    service_imports = runtime_imports(SERVICE_LAYERS)
    assert set(service_imports) <= sdk | extras["service"], service_imports
    # Not imported by name, yet the service cannot run without them.
    assert {"gunicorn", "django", "djangorestframework", "django-q2"} <= extras["service"]
    assert extras["testing"] <= set(pinned("requirements-test.txt"))
    # Everything else the pyproject promises is pinned for `make run`.
    runtime_extras = set().union(*(specs for name, specs in extras.items() if name != "testing"))
    assert sdk | runtime_extras <= set(pinned("requirements.txt"))


def test_test_only_packages_stay_out_of_the_runtime():
    test_only = set(pinned("requirements-test.txt"))
    assert {"pytest", "selenium", "schemathesis", "hypothesis", "pyjwt"} <= test_only
    assert (ROOT / "requirements-test.txt").read_text().splitlines()[1] == "-r requirements.txt"
    runtime = set(pinned("requirements.txt"))
    project = _project()
    declared = {_requirement_name(s) for s in project["dependencies"]}
    declared |= {_requirement_name(s) for name, specs in project["optional-dependencies"].items()
                 if name != "testing" for s in specs}
    assert not test_only & (runtime | declared)
    assert not test_only & set(runtime_imports(tuple(LAYERS)))  # only the testing kit imports them
