"""accelctl convert without --config reads what `make run` reads; accelctl --version is the project's version."""
import os
import subprocess
import sys

import acceleration_sdk


def accelctl(*args, cwd, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("ACCELD_CONFIG", "DJANGO_SETTINGS_MODULE")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "acceleration_sdk.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_convert_finds_config_yaml_then_the_example(tmp_path):
    # Each file holds a different mistake: the error tells which file accelctl read, before any network I/O.
    (tmp_path / "config.example.yaml").write_text("converter: {from_example: 1}\n")
    out = accelctl("convert", "127.0.0.1:1/x:y", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (2, "accelctl: error: converter.from_example: unknown key "
                                               "(allowed: driver, harbor_annotation, platforms, routes, rules, "
                                               "timeout, verify, worker)\n")
    (tmp_path / "config.yaml").write_text("converter: {driver: {type: nope}}\n")
    out = accelctl("convert", "127.0.0.1:1/x:y", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("accelctl: error: converter.driver.type: unknown driver 'nope'")
    other = tmp_path / "other.yaml"
    other.write_text("server: {prot: 1}\n")
    out = accelctl("convert", "127.0.0.1:1/x:y", cwd=tmp_path, ACCELD_CONFIG=str(other))
    assert out.returncode == 2 and "server.prot" in out.stderr


def test_convert_without_any_config_says_what_it_looked_for(tmp_path):
    out = accelctl("convert", "127.0.0.1:1/x:y", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == ("accelctl: error: no --config given and no config.yaml or config.example.yaml "
                          "in the working directory\n")


def test_driver_override_is_checked_like_the_config(tmp_path):
    (tmp_path / "config.yaml").write_text("converter: {driver: {config: {chunk_size: 65536}}}\n")
    out = accelctl("convert", "--driver", "nydusx", "127.0.0.1:1/x:y", cwd=tmp_path)
    assert out.returncode == 2 and "converter.driver.type: unknown driver 'nydusx' (available: " in out.stderr
    assert "Traceback" not in out.stderr


def test_help_and_version(tmp_path):
    out = accelctl("convert", "--help", cwd=tmp_path)
    assert "config.yaml, else config.example.yaml in the working directory" in " ".join(out.stdout.split())
    assert "compression (str, default estargz, one of estargz|zstdchunked)" in out.stdout  # from the schema
    out = accelctl("--version", cwd=tmp_path)
    assert out.stdout.strip() == f"accelctl {acceleration_sdk.__version__}"


def test_one_version_string():
    from importlib import metadata

    assert metadata.version("acceld") == acceleration_sdk.__version__  # pyproject reads __version__
