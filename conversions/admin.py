"""The admin: a read-only task list with actions (django-q2's admin is the model). Every change goes
through ``conversions.services``; the admin only reports what the services did.

Seeing tasks needs ``view_conversiontask``; starting a conversion (Retry, Convert again, the convert
form) needs ``convert_image``: it makes the service pull and push with its robot credentials.
"""
from __future__ import annotations

import uuid

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import BadRequest, PermissionDenied
from django.http import HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from acceleration_sdk.errors import AccelError

from . import services
from .errors import InvalidState, ServiceError
from .models import ConversionTask, Status, Trigger

CONVERT_PERMISSION = "conversions.convert_image"


class ConvertForm(forms.Form):
    source = forms.CharField(label="Image reference", max_length=512,
                             widget=forms.TextInput(attrs={"size": 80, "placeholder": "harbor.example.com/library/nginx:latest"}),
                             help_text="Converted to the same repository, tag + the configured suffix; "
                                       "with converter.routes, through every route that matches.")


def _progress_text(task: ConversionTask) -> str:
    progress = (task.worker_task.progress if task.status == Status.PROCESSING else task.progress) or {}
    if task.status == Status.PROCESSING and task.shared_with_id:
        prefix = "shared · "
    else:
        prefix = ""
    phase = progress.get("phase") or ("queued" if task.status == Status.PROCESSING else "")
    pct = progress.get("percent")
    parts = [p for p in (phase, f"{pct}%" if pct is not None else "") if p]
    return prefix + " ".join(parts)


@admin.register(ConversionTask)
class ConversionTaskAdmin(admin.ModelAdmin):
    list_display = ("source", "route", "target", "status", "created", "finished", "source_size_display",
                    "target_size_display", "progress_display", "attempts", "trigger", "reason_display")
    list_filter = ("status", "route", "trigger", "skipped")
    search_fields = ("source",)
    date_hierarchy = "created"
    ordering = ("-created",)
    list_per_page = 50
    actions = ["retry", "convert_again"]
    change_list_template = "admin/conversions/conversiontask/change_list.html"
    fieldsets = (
        (None, {"fields": ("id", "status", "source", "route", "target", "target_digest", "reason_display", "skipped")}),
        ("Sizes and timing", {"fields": ("source_size_display", "target_size_display", "created", "started",
                                         "finished", "durations", "attempts")}),
        ("Progress", {"fields": ("progress_display", "layers_display")}),
        ("Origin", {"fields": ("trigger", "digest", "event_id", "shared_with", "driver", "driver_version")}),
    )
    readonly_fields = ("id", "status", "source", "route", "target", "target_digest", "reason_display", "skipped",
                       "source_size_display", "target_size_display", "created", "started", "finished",
                       "durations", "attempts", "progress_display", "layers_display", "trigger", "digest",
                       "event_id", "shared_with", "driver", "driver_version")

    # -- read-only: no add, no edit; finished tasks may be deleted (a running one is someone's work)
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.status == Status.PROCESSING:
            return False
        return super().has_delete_permission(request, obj)

    def has_convert_permission(self, request) -> bool:
        """``permissions=["convert"]`` on an action asks this (Django's ``has_<name>_permission``)."""
        return request.user.has_perm(CONVERT_PERMISSION)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("shared_with")

    def changelist_view(self, request, extra_context=None):
        if request.method == "POST":
            for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                try:  # Django would raise a ValidationError deep in the action's query: a 500
                    uuid.UUID(value)
                except ValueError:
                    raise BadRequest("a selected task id is not a UUID") from None
        extra_context = {**(extra_context or {}), "can_convert": self.has_convert_permission(request)}
        return super().changelist_view(request, extra_context)

    # -- columns
    @admin.display(description="source size", ordering="source_size")
    def source_size_display(self, task):
        return filesizeformat(task.source_size) if task.source_size else "-"

    @admin.display(description="target size", ordering="target_size")
    def target_size_display(self, task):
        return filesizeformat(task.target_size) if task.target_size else "-"

    @admin.display(description="progress")
    def progress_display(self, task):
        return _progress_text(task) or "-"

    @admin.display(description="reason")
    def reason_display(self, task):
        # Whole, never cut: the reason is what an operator needs to fix the failure.
        return format_html('<span style="white-space: pre-wrap">{}</span>', task.reason) if task.reason else "-"

    @admin.display(description="layers")
    def layers_display(self, task):
        progress = (task.worker_task.progress if task.status == Status.PROCESSING else task.progress) or {}
        layers = progress.get("layers") or {}
        if not layers:
            return progress.get("message") or "-"
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{} / {}</td></tr>",
                                ((d, s.get("phase", ""), filesizeformat(s.get("done") or 0),
                                  filesizeformat(s.get("total") or 0)) for d, s in sorted(layers.items())))
        return format_html("<table><tr><th>layer</th><th>phase</th><th>done</th></tr>{}</table>", rows)

    # -- actions
    @admin.action(description="Retry (re-queue failed tasks, same source)", permissions=["convert"])
    def retry(self, request, queryset):
        retried, refused, denied = 0, [], []
        for task in queryset:
            try:
                services.conversion_retry(task_id=task.pk)
                retried += 1
            except InvalidState:
                refused.append(task)
            except (ServiceError, AccelError) as exc:  # its host left provider.source, or it no longer parses
                denied.append(f"{task.source}: {exc}")
        if retried:
            self.message_user(request, f"Re-queued {retried} failed task(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, f"Skipped {len(refused)} task(s) that had not failed (only FAILED tasks "
                                       f"can be retried).", messages.WARNING)
        for reason in denied:
            self.message_user(request, f"Not retried: {reason}", messages.ERROR)

    @admin.action(description="Convert again (a new task for the same source)", permissions=["convert"])
    def convert_again(self, request, queryset):
        created = 0
        for source, route in sorted({(task.source, task.route) for task in queryset}):
            try:  # the same route again (a route removed from the config is refused by the service)
                if route:
                    services.conversion_create(source=source, trigger=Trigger.ADMIN, route=route, force=True)
                    created += 1
                else:  # acceld's way, or a task from before converter.routes: every matching route, as a push
                    created += len(services.conversions_create(sources=[(source, "")], trigger=Trigger.ADMIN,
                                                               strict=True))
            except (ServiceError, AccelError) as exc:
                self.message_user(request, f"Not converted: {source}: {exc}", messages.ERROR)
        if created:
            self.message_user(request, f"Started {created} conversion(s).", messages.SUCCESS)

    # -- "Convert an image" form
    def get_urls(self):
        extra = [path("convert/", self.admin_site.admin_view(self.convert_view),
                      name="conversions_conversiontask_convert")]
        return extra + super().get_urls()

    def convert_view(self, request):
        if not self.has_convert_permission(request):
            raise PermissionDenied
        form = ConvertForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                # as a push would: one task per matching route (with converter.routes), refused if none
                tasks = services.conversions_create(sources=[(form.cleaned_data["source"], "")],
                                                    trigger=Trigger.ADMIN, strict=True)
            except (ServiceError, AccelError) as exc:
                form.add_error("source", str(exc))
            else:
                task = tasks[0]
                note = " (already converted)" if task.skipped else ""
                routed = ", ".join(t.route for t in tasks if t.route)
                note += f" (routes: {routed})" if routed else ""
                self.message_user(request, f"Started the conversion of {task.source}{note}.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:conversions_conversiontask_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Convert an image",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/conversions/conversiontask/convert.html", context)


admin.site.site_header = "acceld administration"
admin.site.site_title = "acceld"
admin.site.index_title = "Image conversions"
