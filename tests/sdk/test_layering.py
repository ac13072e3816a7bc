"""The arrows point one way: the SDK never imports Django, and never imports a driver or the ``drivers``
package (drivers, the built-in ones too, are found through the ``acceleration_sdk.drivers`` entry points).

Each check runs in a fresh interpreter: this test module imports neither ``drivers`` nor Django itself.
"""
import ast
import json
import os
import pathlib
import subprocess
import sys

import acceleration_sdk

ROOT = pathlib.Path(__file__).resolve().parents[2]
SDK = ROOT / "acceleration_sdk"


def _fresh(code: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_sdk_and_drivers_do_not_import_django():
    loaded = _fresh(
        "import sys, json, importlib, pkgutil\n"
        "import acceleration_sdk, drivers\n"
        "for pkg in (acceleration_sdk, drivers):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "acceleration_sdk.convert\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'rest_framework', 'django_q', 'conversions', 'acceld_project'))))\n")
    assert loaded == []


def test_importing_every_sdk_module_loads_no_driver():
    # Every SDK module, every lazy public name, and the driver listing: none of it may load `drivers`.
    loaded = _fresh(
        "import sys, json, importlib, pkgutil\n"
        "import acceleration_sdk\n"
        "for m in pkgutil.walk_packages(acceleration_sdk.__path__, 'acceleration_sdk.'):\n"
        "    importlib.import_module(m.name)\n"
        "for name in acceleration_sdk.__all__:\n"
        "    getattr(acceleration_sdk, name)\n"
        "from acceleration_sdk.driver import available\n"
        "assert 'estargz' in available()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'drivers')))\n")
    assert loaded == []


def _imports_drivers(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "drivers" for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == "drivers"
    if isinstance(node, ast.Call):  # importlib.import_module("drivers..."), __import__("drivers")
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        return func in ("import_module", "__import__") and any(
            isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.split(".")[0] == "drivers"
            for a in node.args)
    return False


def test_no_sdk_source_names_the_drivers_package():
    # Static as well: an import inside a function runs only on some paths, so the fresh interpreter can miss it.
    offenders = []
    for path in sorted(SDK.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        offenders += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree) if _imports_drivers(n)]
    assert offenders == []


def test_public_api_is_sorted_and_resolves():
    assert acceleration_sdk.__all__ == sorted(acceleration_sdk.__all__)
    for name in acceleration_sdk.__all__:
        assert getattr(acceleration_sdk, name) is not None, name


def test_every_error_has_a_distinct_code():
    from acceleration_sdk import errors
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.AccelError)]
    codes = [c.code for c in classes]
    assert len(classes) >= 10 and len(set(codes)) == len(codes)
