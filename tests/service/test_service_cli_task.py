"""``accelctl task`` (acceleration_sdk.cli_task) against the service on pytest-django's live server."""
from __future__ import annotations

import subprocess
import sys

import pytest

from acceleration_sdk import cli_task
from conversions.models import ConversionTask, Status, Trigger
from tests.service.conftest import AUTH, HOST

pytestmark = pytest.mark.django_db(transaction=True)
SRC = f"{HOST}/library/nginx:latest"


@pytest.fixture
def addr(live_server, acceld):
    return live_server.url.removeprefix("http://")


def run(*argv) -> int:
    return cli_task.main(list(argv))


def test_create_async_then_list(addr, capsys):
    assert run("create", "--addr", addr, "--auth", AUTH, SRC) == 0
    assert "Submitted asynchronous task" in capsys.readouterr().err
    task = ConversionTask.objects.get()
    assert (task.source, task.status, task.trigger) == (SRC, Status.PROCESSING, Trigger.CLI)
    assert run("list", "--addr", addr, "--auth", AUTH) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "STATUS", "SOURCE", "ROUTE", "TARGET", "REASON"]
    fields = lines[1].split()
    assert fields[0] == str(task.pk) and fields[3] == "PROCESSING" and fields[4] == SRC  # awk '{print $4}'
    assert fields[5:] == ["-", f"{SRC}-esgz"] == ["-", task.target]  # no converter.routes: no route


def test_addr_before_the_action_like_acceld(addr, capsys):
    parser_args = ["task", "--addr", addr, "--auth", AUTH, "list"]
    import argparse

    parser = argparse.ArgumentParser()
    cli_task.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(parser_args)
    assert (args.addr, args.auth) == (addr, AUTH)
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("ID")


def test_create_sync_success_and_failure(addr, q_sync, capsys):
    assert run("create", "--addr", addr, "--auth", AUTH, "--sync", SRC) == 0
    assert "Task has been completed." in capsys.readouterr().err
    assert ConversionTask.objects.get().status == Status.COMPLETED
    assert run("create", "--addr", addr, "--auth", AUTH, "--sync", f"{HOST}/library/nginx:fail") == 1
    err = capsys.readouterr().err
    assert f"service response: fake failure converting {HOST}/library/nginx:fail (500)" in err
    assert run("list", "--addr", addr, "--auth", AUTH, "--status", "FAILED") == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[3] for r in rows] == ["FAILED"]
    assert "fake failure converting" in rows[0]


def test_errors_are_one_line(addr, capsys):
    assert run("create", "--addr", addr, SRC) == 1
    assert capsys.readouterr().err.strip() == (
        f"accelctl: error: service response: invalid auth config for host {HOST} (401): {cli_task.CREATE_401_HINT}")
    assert run("list", "--addr", addr) == 1
    assert "(401)" in capsys.readouterr().err
    assert run("list", "--addr", "127.0.0.1:1") == 1
    assert "cannot reach acceld at http://127.0.0.1:1" in capsys.readouterr().err
    assert ConversionTask.objects.count() == 0


def test_table_cuts_long_fields():
    table = cli_task.format_table([{"id": "x", "created": "2022-04-06T06:45:11.83226503Z", "status": "FAILED",
                                    "source": "s" * 100, "reason": "line one\nline two",
                                    "route": "mirror", "target": "t" * 90}])
    row = table.splitlines()[1].split()
    assert row[1:4] == ["2022-04-06", "06:45:11", "FAILED"] and row[4] == "s" * 80 + "..."
    assert row[5:7] == ["mirror", "t" * 80 + "..."]
    assert row[7:] == ["line", "one", "line", "two"]


def test_table_of_an_older_service_without_route_or_target():
    row = cli_task.format_table([{"id": "x", "status": "COMPLETED", "source": "s"}]).splitlines()[1].split()
    assert row == ["x", "-", "COMPLETED", "s", "-", "-"]


def test_cli_module_imports_no_django():
    code = ("import sys, acceleration_sdk.cli_task; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework', 'django_q')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
