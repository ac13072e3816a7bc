"""``GET /api/v1/health``: 200 ``Ok`` (text, as acceld) when the database answers and work_dir is writable."""
from __future__ import annotations

import logging
import os
import tempfile

from django.conf import settings
from django.db import connection
from django.http import HttpResponse

from .errors import AcceldJsonResponse

log = logging.getLogger("acceld.health")


def problems() -> list[str]:
    out = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM conversions_conversiontask LIMIT 1")
    except Exception as exc:  # any database failure makes the service unhealthy
        log.warning("health: database unusable: %s", exc)
        out.append("database unusable")
    path = settings.ACCELD_WORK_DIR  # published by settings from provider.work_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".health-"):
            pass
        if not os.access(path, os.W_OK):
            raise PermissionError(path)
    except OSError as exc:
        log.warning("health: work_dir %s unusable: %s", path, exc)
        out.append("work_dir not writable")
    return out


def health(request):
    if request.method not in ("GET", "HEAD"):
        return AcceldJsonResponse({"code": "ERR_METHOD_NOT_ALLOWED", "message": "Method Not Allowed"}, status=405)
    found = problems()
    if found:
        return AcceldJsonResponse({"code": "ERR_UNHEALTHY", "message": "; ".join(found)}, status=500)
    return HttpResponse("Ok", content_type="text/plain; charset=UTF-8")
