"""A config naming an unknown driver, a bad driver option or routes that cannot be satisfied stops the service
at start-up, in one line:
`make run` (acceld_project.run) and every Django entry point (manage.py, gunicorn, qcluster load settings)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BAD = [
    ("converter: {driver: {type: nydusx}}\n", "converter.driver.type: unknown driver 'nydusx' (available: "),
    ("converter: {driver: {type: estargz, config: {compression: zstdchunked, compression_level: 30}}}\n",
     "converter.driver.config.compression_level: expected 1..22, got 30"),
    # a nydus option this driver does not implement: refused by name
    ("converter: {driver: {type: nydus, config: {batch_size: '0x100000', with_referrer: true}}}\n",
     "converter.driver.config.batch_size: batched chunks are not supported yet"),
    # converter.routes that cannot be satisfied
    ("converter: {routes: [{name: a, target: '{host}/{path}:{tag}-x'}, {name: b, target: '{host}/{path}:{tag}-x'}]}\n",
     "converter.routes[1].target: writes the same target as route 'a'"),
    ("converter: {routes: [{name: a, target: 'elsewhere.example.com/{path}:{tag}'}]}\n",
     "converter.routes[0].target: host 'elsewhere.example.com' is not a configured registry (provider.source)"),
    ("converter: {routes: [{name: a, target: '{host}/{path}:{tag}-{flavor}'}]}\n",
     "converter.routes[0].target: unknown placeholder {flavor}"),
    ("converter: {routes: [{name: a, target: '{host}/{path}:{tag}-x', match: {tag: ['v[1']}}]}\n",
     "converter.routes[0].match.tag[0]: unbalanced [ ] in glob 'v[1'"),
]


def start(tmp_path, text: str, argv: list[str], config_var: str) -> tuple[str, subprocess.CompletedProcess]:
    """Run one start-up command with a config holding ``text``; the config's path is handed over in ``config_var``."""
    config = tmp_path / "config.yaml"
    config.write_text(f"provider: {{work_dir: {tmp_path / 'work'}}}\n" + text)
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "ACCELD_CONFIG", "CONFIG")}
    env[config_var] = str(config)
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    return str(config), out


@pytest.mark.parametrize("text, message", BAD)
def test_make_run_refuses_to_start(tmp_path, text, message):
    config, out = start(tmp_path, text, ["-m", "acceld_project.run"], "CONFIG")
    assert out.returncode == 2
    assert out.stderr.startswith(f"acceld: {config}: {message}"), out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "serving" not in out.stdout and not (tmp_path / "work" / "acceld.sqlite3").exists()


@pytest.mark.parametrize("text, message", BAD)
def test_manage_py_refuses_to_start(tmp_path, text, message):
    config, out = start(tmp_path, text, ["manage.py", "check"], "ACCELD_CONFIG")
    assert out.returncode != 0
    assert out.stderr.startswith(f"acceld: {config}: {message}") and "Traceback" not in out.stderr, out.stderr
