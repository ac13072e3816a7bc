"""Refuse an oversized request body with 413 and acceld's JSON error, before anything reads it.

The limit is ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (settings, one place). Django enforces that limit only once
something reads the body, and then raises ``RequestDataTooBig``, which becomes a 400 (or, inside DRF, a
500); here the declared ``Content-Length`` is checked first, so the body is never read or parsed.
A body without a ``Content-Length`` (chunked) is not read by Django's WSGI request at all.
"""
from __future__ import annotations

from django.conf import settings

from .errors import AcceldJsonResponse, PayloadTooLarge, error_body


def too_large() -> AcceldJsonResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    status, body = error_body(PayloadTooLarge(f"request body is larger than {limit} bytes"))
    response = AcceldJsonResponse(body, status=status)
    response["Content-Length"] = str(len(response.content))  # answered before CommonMiddleware would set it
    return response


class BodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            return too_large()
        return self.get_response(request)
