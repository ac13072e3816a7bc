"""django-q2's admin, locked down: its Schedule admin lets a superuser run any dotted function (a Schedule
names ``func`` and its arguments, and the cluster calls it), and its task admins resubmit a stored function
call. acceld has its own task views (conversions' admin), so Schedule is removed and the queue's records
(successes, failures, queued messages) stay visible but read-only, without actions.

``lock_down(site)`` runs from ``acceld_project.urls``, after the admin's autodiscovery registered django-q2's
models and before the admin's URLs are built.
"""
from __future__ import annotations

from django.contrib import admin


class ReadOnlyMixin:
    """View permission only: no add, change, delete, and no actions (django-q2's "resubmit" among them)."""

    actions = None

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def lock_down(site: admin.AdminSite) -> None:
    from django_q.models import Schedule

    if site.is_registered(Schedule):
        site.unregister(Schedule)
    for model, model_admin in list(site._registry.items()):
        if model._meta.app_label == "django_q" and not isinstance(model_admin, ReadOnlyMixin):
            site.unregister(model)
            site.register(model, type(f"ReadOnly{type(model_admin).__name__}", (ReadOnlyMixin, type(model_admin)), {}))
