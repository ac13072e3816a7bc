"""The service's errors and the ONE place that turns any error into ``{"code": "ERR_…", "message": …}``.

    ServiceError                 (status, code)
    ├── IllegalParameter         400 ERR_ILLEGAL_PARAMETER   a payload or query we cannot use
    ├── Unauthorized             401 ERR_UNAUTHORIZED        Authorization missing or wrong for a resource's host
    ├── SourceNotAllowed         403 ERR_SOURCE_NOT_ALLOWED  the image's host is not in provider.source
    ├── InvalidState             409 ERR_INVALID_STATE       e.g. retrying a task that did not fail
    ├── PayloadTooLarge          413 ERR_PAYLOAD_TOO_LARGE   a body over DATA_UPLOAD_MAX_MEMORY_SIZE (not read)
    └── ConvertFailed            500 ERR_CONVERT_FAILED      ?sync=true and the conversion failed (message = reason)

SDK errors (``acceleration_sdk.errors.AccelError``) keep their own ``code``; a bad reference is a 400.
Django's own ``Http404`` (DRF raises it for an unknown ``?format=``) is a 404 and ``PermissionDenied`` a 403.
Anything else is logged with its traceback and answered with a bare 500: no traceback, no secret.
"""
from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from acceleration_sdk.errors import AccelError, ReferenceError_

log = logging.getLogger("acceld.errors")


class ServiceError(Exception):
    status = 500
    code = "ERR_INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class IllegalParameter(ServiceError):
    status, code = 400, "ERR_ILLEGAL_PARAMETER"


class Unauthorized(ServiceError):
    status, code = 401, "ERR_UNAUTHORIZED"


class SourceNotAllowed(ServiceError):
    """acceld pulls from (and pushes with its credentials to) only the registries of ``provider.source``."""

    status, code = 403, "ERR_SOURCE_NOT_ALLOWED"


class InvalidState(ServiceError):
    status, code = 409, "ERR_INVALID_STATE"


class PayloadTooLarge(ServiceError):
    status, code = 413, "ERR_PAYLOAD_TOO_LARGE"


class ConvertFailed(ServiceError):
    status, code = 500, "ERR_CONVERT_FAILED"


# acceld's message for an unknown route, kept verbatim.
ENDPOINT_NOT_FOUND = "Endpoint not found"

# DRF's own exceptions, in the order they are tested (subclasses first).
_DRF_CODES: list[tuple[type[drf.APIException], int, str, str | None]] = [
    (drf.ParseError, 400, "ERR_ILLEGAL_PARAMETER", "invalid webhook payload"),
    (drf.UnsupportedMediaType, 400, "ERR_ILLEGAL_PARAMETER", "invalid webhook payload"),
    (drf.ValidationError, 400, "ERR_ILLEGAL_PARAMETER", None),
    (drf.NotAuthenticated, 401, "ERR_UNAUTHORIZED", None),
    (drf.AuthenticationFailed, 401, "ERR_UNAUTHORIZED", None),
    (drf.PermissionDenied, 403, "ERR_FORBIDDEN", None),
    (drf.NotFound, 404, "ERR_INVALID_ENDPOINT", ENDPOINT_NOT_FOUND),
    (drf.MethodNotAllowed, 405, "ERR_METHOD_NOT_ALLOWED", None),
    (drf.NotAcceptable, 406, "ERR_NOT_ACCEPTABLE", None),
    (drf.Throttled, 429, "ERR_THROTTLED", None),
]


def _drf_message(exc: drf.APIException) -> str:
    detail = exc.detail
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    return _flatten(detail)


def _flatten(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_flatten(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in value.items())
    return str(value)


def error_body(exc: BaseException) -> tuple[int, dict]:
    """``(status, {"code", "message"})`` for any exception."""
    if isinstance(exc, ServiceError):
        return exc.status, {"code": exc.code, "message": exc.message}
    if isinstance(exc, RequestDataTooBig):  # a body read past the limit without a Content-Length
        return 413, {"code": PayloadTooLarge.code, "message": "request body is too large"}
    if isinstance(exc, ReferenceError_):
        return 400, {"code": "ERR_ILLEGAL_PARAMETER", "message": str(exc)}
    if isinstance(exc, AccelError):
        return 500, {"code": exc.code, "message": str(exc)}
    if isinstance(exc, Http404):
        return 404, {"code": "ERR_INVALID_ENDPOINT", "message": ENDPOINT_NOT_FOUND}
    if isinstance(exc, PermissionDenied):
        return 403, {"code": "ERR_FORBIDDEN", "message": "permission denied"}
    if isinstance(exc, drf.APIException):
        for cls, status, code, message in _DRF_CODES:
            if isinstance(exc, cls):
                return status, {"code": code, "message": message or _drf_message(exc)}
        return exc.status_code, {"code": "ERR_" + str(exc.default_code).upper(), "message": _drf_message(exc)}
    log.error("unhandled error", exc_info=exc)
    return 500, {"code": "ERR_INTERNAL", "message": "internal server error"}


def exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every API error goes through here."""
    status, body = error_body(exc)
    request = context.get("request") if isinstance(context, dict) else None
    if status == 404 and request is not None and "format" in request.GET:
        # DRF found no renderer for ?format=: answer in JSON whatever the view renders (the schema: YAML).
        return AcceldJsonResponse({"code": "ERR_INVALID_ENDPOINT",
                                   "message": f"{ENDPOINT_NOT_FOUND}: unknown ?format= for this path"}, status=404)
    headers = {}
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed, Unauthorized)):
        headers["WWW-Authenticate"] = 'Token realm="acceld"'
    return Response(body, status=status, headers=headers)


class AcceldJsonResponse(JsonResponse):
    """A JSON body the way acceld's Go encoder writes it: compact, one trailing newline."""

    def __init__(self, data, status=200, **kwargs):
        super().__init__(data, status=status, safe=False, json_dumps_params={"separators": (",", ":")}, **kwargs)
        self.content = self.content + b"\n"


def not_found(request, exception=None):
    return AcceldJsonResponse({"code": "ERR_INVALID_ENDPOINT", "message": ENDPOINT_NOT_FOUND}, status=404)


def server_error(request):
    return AcceldJsonResponse({"code": "ERR_INTERNAL", "message": "internal server error"}, status=500)
