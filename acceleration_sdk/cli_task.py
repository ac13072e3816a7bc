"""``accelctl task``: talk to a running acceld over HTTP (create a conversion, list tasks).

Pure requests, no Django: ``add_parser(subparsers)`` registers the ``task`` command on accelctl's parser.
``task create`` posts the same payload Harbor does; ``task list`` prints acceld's table plus ROUTE and TARGET
columns; its fourth whitespace-separated field is still the STATUS (acceld's scripts read it with
``awk '{print $4}'``).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import TextIO

import requests

from . import reference
from .errors import AccelError, UnreachableError

DEFAULT_ADDR = "localhost:2077"  # acceld's default
CONNECT_TIMEOUT = 5
SYNC_TIMEOUT = 3600 + 120  # converter.timeout's default plus the service's wait margin
ELLIPSIS_AT = 80  # acceld cuts SOURCE and REASON here
CLIENT_HEADER = {"X-Acceld-Client": "accelctl"}
# acceld answers every refused webhook with the same words; the client can say what to check.
CREATE_401_HINT = ("the SOURCE's host must be in the service's provider.source, and --auth must be that host's "
                   "webhook auth_header")


def _base(addr: str) -> str:
    addr = addr.strip().rstrip("/")
    return addr if addr.startswith(("http://", "https://")) else f"http://{addr}"


def _headers(auth: str | None) -> dict[str, str]:
    headers = dict(CLIENT_HEADER)
    if auth:
        headers["Authorization"] = auth
    return headers


def _request(method: str, url: str, *, timeout: float, **kwargs) -> requests.Response:
    try:
        resp = requests.request(method, url, timeout=(CONNECT_TIMEOUT, timeout), **kwargs)
    except requests.RequestException as exc:
        raise UnreachableError(f"cannot reach acceld at {url.split('/api/')[0]}: {type(exc).__name__}") from exc
    if resp.status_code >= 400:
        try:
            body = resp.json()
            message, code = body.get("message", ""), body.get("code", "")
        except (ValueError, AttributeError):
            message, code = resp.text.strip()[:200], ""
        raise AccelError(f"service response: {message or resp.reason} ({resp.status_code})",
                         status=resp.status_code, service_code=code)
    return resp


def create(addr: str, source: str, *, sync: bool = False, auth: str | None = None, route: str = "") -> None:
    """Ask acceld to convert ``source``; with ``sync`` return only when the conversion finished.

    ``source`` is checked here first (a ``ReferenceError_`` names what is wrong without a round trip);
    the service refuses a source whose host is not one of its configured registries. ``route`` converts
    through that ``converter.routes`` entry only (default: every route that matches).
    """
    reference.parse(source)
    payload = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": source}]}}
    try:
        params = {"sync": "true" if sync else "false"}
        if route:
            params["route"] = route
        _request("POST", f"{_base(addr)}/api/v1/conversions", params=params,
                 json=payload, headers=_headers(auth), timeout=SYNC_TIMEOUT if sync else 60)
    except AccelError as exc:
        if getattr(exc, "status", None) == 401:
            raise AccelError(f"{exc}: {CREATE_401_HINT}", status=401,
                             service_code=getattr(exc, "service_code", "")) from None
        raise


def list_tasks(addr: str, *, auth: str | None = None, status: str = "", limit: int | None = None) -> list[dict]:
    params = {}
    if status:
        params["status"] = status
    if limit:
        params["limit"] = str(limit)
    resp = _request("GET", f"{_base(addr)}/api/v1/conversions", params=params, headers=_headers(auth), timeout=60)
    try:
        tasks = resp.json()
    except ValueError:
        raise AccelError("service response: not JSON") from None
    if not isinstance(tasks, list):
        raise AccelError("service response: expected a list of tasks")
    return tasks


def _ellipsis(text: str, limit: int = ELLIPSIS_AT) -> str:
    return text[:limit] + "..." if len(text) > limit else text


def _created(value: str) -> str:
    """RFC3339 -> ``2006-01-02 15:04:05`` (UTC), the format of acceld's table."""
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return "-"
    return parsed.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def format_table(tasks: list[dict]) -> str:
    """acceld's columns, then where each conversion went: ROUTE (``-`` without converter.routes, so every
    row has the same number of fields before REASON) and TARGET. STATUS stays the fourth field."""
    rows = [("ID", "CREATED", "STATUS", "SOURCE", "ROUTE", "TARGET", "REASON")]
    for task in tasks:
        rows.append((str(task.get("id", "")), _created(task.get("created", "")), str(task.get("status", "")),
                     _ellipsis(str(task.get("source", ""))), str(task.get("route") or "-"),
                     _ellipsis(str(task.get("target") or "-")),
                     _ellipsis(" ".join(str(task.get("reason", "")).split()))))
    last = len(rows[0]) - 1  # REASON is not padded
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    lines = []
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(last)] + [row[last]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _cmd_create(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    if args.sync:
        print("Waiting for the task to complete...", file=err, flush=True)
    create(args.addr, args.source, sync=args.sync, auth=args.auth, route=args.route)
    if args.sync:
        print("Task has been completed.", file=err)
    else:
        print("Submitted asynchronous task, check status by `accelctl task list`.", file=err)
    return 0


def _cmd_list(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    (out or sys.stdout).write(format_table(list_tasks(args.addr, auth=args.auth, status=args.status, limit=args.limit)))
    return 0


def _common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--addr``/``--auth`` go before the action (acceld's ``task --addr``) or after it; the action's copies
    default to SUPPRESS so they do not overwrite a value given before the action."""
    addr_default = os.environ.get("ACCELD_ADDR", DEFAULT_ADDR) if defaults else argparse.SUPPRESS
    auth_default = (os.environ.get("ACCELD_AUTH") or None) if defaults else argparse.SUPPRESS
    parser.add_argument("--addr", default=addr_default, metavar="HOST:PORT",
                        help=f"acceld's address (default $ACCELD_ADDR or {DEFAULT_ADDR})")
    parser.add_argument("--auth", default=auth_default, metavar="HEADER",
                        help="the Authorization header: the source host's webhook auth_header (create; list "
                             "then shows that host's tasks only), or 'Token <key>' of a user with the "
                             "view_conversiontask permission (list) (default $ACCELD_AUTH)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``task create`` and ``task list`` on accelctl's sub-command parsers."""
    task = subparsers.add_parser("task", help="manage conversion tasks in a running acceld",
                                 description="Create and list conversion tasks of a running acceld service.")
    _common(task, defaults=True)
    sub = task.add_subparsers(dest="task_command", metavar="ACTION")
    sub.required = True

    create_p = sub.add_parser("create", help="convert a source image to an acceleration image",
                              description="Queue a conversion of SOURCE, as Harbor's webhook would.")
    _common(create_p, defaults=False)
    create_p.add_argument("--sync", action="store_true", help="wait until the conversion has finished")
    create_p.add_argument("--route", default="", metavar="NAME",
                          help="convert through this converter.routes entry only (default: every matching route)")
    create_p.add_argument("source", metavar="SOURCE", help="e.g. harbor.example.com/library/nginx:latest")
    create_p.set_defaults(func=_cmd_create)

    list_p = sub.add_parser("list", aliases=["ls"], help="list conversion tasks, newest first",
                            description="List conversion tasks, newest first: ID CREATED STATUS SOURCE ROUTE "
                                        "TARGET REASON (ROUTE is '-' for a task of converter.rules).")
    _common(list_p, defaults=False)
    list_p.add_argument("--status", default="", choices=["", "PROCESSING", "COMPLETED", "FAILED"],
                        help="only tasks with this status")
    list_p.add_argument("--limit", type=int, default=None, help="at most this many tasks")
    list_p.set_defaults(func=_cmd_list)
    return task


def main(argv: list[str] | None = None) -> int:
    """``python -m acceleration_sdk.cli_task create|list ...`` (accelctl normally wraps this)."""
    parser = argparse.ArgumentParser(prog="accelctl")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["task", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.func(args)
    except AccelError as exc:
        print(f"accelctl: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
