"""The SDK and the drivers never import Django (the arrows point one way)."""
import json
import os
import subprocess
import sys

import acceleration_sdk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_sdk_and_drivers_do_not_import_django():
    code = (
        "import sys, json, importlib, pkgutil\n"
        "import acceleration_sdk, drivers\n"
        "for pkg in (acceleration_sdk, drivers):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "acceleration_sdk.convert\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'rest_framework', 'django_q', 'conversions', 'acceld_project'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_public_api_is_sorted_and_resolves():
    assert acceleration_sdk.__all__ == sorted(acceleration_sdk.__all__)
    for name in acceleration_sdk.__all__:
        assert getattr(acceleration_sdk, name) is not None, name


def test_every_error_has_a_distinct_code():
    from acceleration_sdk import errors
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.AccelError)]
    codes = [c.code for c in classes]
    assert len(classes) >= 10 and len(set(codes)) == len(codes)
