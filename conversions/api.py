"""``/api/v1/conversions``: validate -> call a service -> serialize. Errors go to ``errors.exception_handler``."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers as drf_serializers
from rest_framework.exceptions import NotAuthenticated, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from acceleration_sdk import reference
from acceleration_sdk.errors import ReferenceError_

from . import listing, selectors, services, webhook
from .auth import WebhookClient, check_webhook_auth, check_webhook_caller
from .conf import get_config
from .errors import ConvertFailed, IllegalParameter
from .models import Status, Trigger
from .serializers import ListQuerySerializer, TaskDetailSerializer, TaskSerializer

OK = "Ok"

_ERROR = inline_serializer("Error", {"code": drf_serializers.CharField(), "message": drf_serializers.CharField()})


def go_bool(text: str) -> bool:
    """Go's strconv.ParseBool as acceld uses it: anything it cannot parse is false."""
    return text in ("1", "t", "T", "true", "TRUE", "True")


def trigger_of(request, event: webhook.WebhookEvent) -> str:
    """A label for who asked: accelctl says so; Harbor sends an event id (or CloudEvents); else a plain API call."""
    if request.headers.get("X-Acceld-Client", "").lower().startswith("accelctl"):
        return Trigger.CLI
    if event.event_id or event.format == "cloudevents" or "harbor" in request.headers.get("User-Agent", "").lower():
        return Trigger.WEBHOOK
    return Trigger.API


class ConversionsView(APIView):
    def perform_authentication(self, request):
        # The webhook is authenticated per resource host (check_webhook_auth), not as a user: touching
        # request.user here would let DRF's token/session classes reject Harbor's header first.
        if request.method != "POST":
            request.user  # noqa: B018 - evaluates the authenticators

    @extend_schema(
        summary="Harbor webhook: convert the pushed artifacts",
        parameters=[OpenApiParameter("sync", OpenApiTypes.BOOL, description="wait for the conversion to finish"),
                    OpenApiParameter("route", OpenApiTypes.STR,
                                     description="convert through this converter.routes entry only")],
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiResponse(OpenApiTypes.STR, description='"Ok"'),
                   400: _ERROR, 401: _ERROR, 500: _ERROR},
    )
    def post(self, request):
        cfg = get_config()
        if not request.body and "HTTP_TRANSFER_ENCODING" not in request.META:
            return Response(OK)  # Harbor's endpoint test posts nothing; acceld answers "Ok" (nothing to do)
        check_webhook_caller(cfg, request.headers.get("Authorization"))  # before any work on the body
        sync = go_bool(request.query_params.get("sync", ""))
        route = request.query_params.get("route", "")
        event = webhook.parse(request.body, request.headers)
        if not event.is_push:
            return Response(OK)
        hosts = []
        for res in event.resources:
            try:
                hosts.append(reference.parse(res.resource_url).host)
            except ReferenceError_ as exc:
                raise IllegalParameter(f"failed to parse resource url: {exc}") from None
        check_webhook_auth(cfg, hosts, request.headers.get("Authorization"))
        tasks = services.conversions_create(sources=[(r.resource_url, r.digest) for r in event.resources],
                                            trigger=trigger_of(request, event), event_id=event.event_id,
                                            route=route)
        if sync and tasks:
            done = selectors.conversion_wait(task_ids=[t.pk for t in tasks],
                                             timeout=cfg.converter.timeout + settings.ACCELD_RETRY_MARGIN,
                                             poll=settings.ACCELD_SYNC_POLL)
            by_id = {t.pk: t for t in done}
            for task in tasks:
                final = by_id.get(task.pk)
                if final is None:
                    raise ConvertFailed(f"task {task.pk} was removed while converting {task.source}")
                if final.status == Status.FAILED:
                    raise ConvertFailed(final.reason or "conversion failed")
                if final.status == Status.PROCESSING:
                    raise ConvertFailed(f"timed out waiting for the conversion of {task.source}")
        return Response(OK)

    @extend_schema(
        summary="List conversion tasks, newest first",
        parameters=[ListQuerySerializer],
        responses={200: TaskSerializer(many=True), 401: _ERROR, 403: _ERROR},
    )
    def get(self, request):
        hosts = self._list_scope(get_config(), request.user)
        query = ListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        if not (q["verbose"] or q["paginated"]) and request.accepted_media_type == "application/json":
            # acceld's own shape, the one that lists every task: rendered from rows, not serializer objects.
            body = listing.task_list(status=q.get("status", ""), source=q.get("source", ""), offset=q["offset"],
                                     limit=q.get("limit"), hosts=hosts)
            return HttpResponse(body, content_type="application/json")
        qs = selectors.conversion_list(status=q.get("status", ""), source=q.get("source", ""), hosts=hosts)
        serializer = TaskDetailSerializer if q["verbose"] else TaskSerializer
        if q["verbose"]:
            qs = qs.select_related("shared_with")
        if q["paginated"]:
            paginator = listing.TaskPagination()
            page = paginator.paginate_queryset(qs, request, view=self)
            return paginator.get_paginated_response(serializer(page, many=True).data)
        offset, limit = q["offset"], q.get("limit")
        page = qs[offset:offset + limit] if limit else qs[offset:]
        return Response(serializer(page, many=True).data)

    @staticmethod
    def _list_scope(cfg, user) -> tuple[str, ...] | None:
        """Whose tasks the caller may list: None for every task, else the hosts its webhook header is for."""
        if cfg.server.public_list:
            return None
        if user is None or not user.is_authenticated:
            raise NotAuthenticated("Authentication failed, please make sure the `Authorization` header is valid")
        if isinstance(user, WebhookClient):
            return tuple(sorted(user.hosts))
        if not user.has_perm("conversions.view_conversiontask"):  # a token or login is not enough by itself
            raise PermissionDenied("listing tasks needs the conversions.view_conversiontask permission")
        return None

