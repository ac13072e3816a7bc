"""acceld's routes: the API paths are acceld's, byte for byte (no trailing slash)."""
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from conversions import api, health, metrics

urlpatterns = [
    path("api/v1/conversions", api.ConversionsView.as_view(), name="conversions"),
    path("api/v1/health", health.health, name="health"),
    path("api/v1/schema", SpectacularAPIView.as_view(), name="schema"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    # The admin's CSS and JS, served by Django itself: the admin is small and internal, and this keeps
    # `make run` free of a separate static file server.
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
]

handler404 = "conversions.errors.not_found"
handler500 = "conversions.errors.server_error"
