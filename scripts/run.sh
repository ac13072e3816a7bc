#!/usr/bin/env bash
# `make run`: migrate the database, then gunicorn + qcluster on the config's server.host:server.port.
# CONFIG=path picks the YAML (default config.yaml, else config.example.yaml); ACCELD_ADMIN_PASSWORD=...
# creates the `admin` user. Ctrl-C stops both. See acceld_project/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PY:-.venv/bin/python}" -m acceld_project.run
