"""acceld's routes: the API paths are acceld's, byte for byte (no trailing slash)."""
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from acceld_project import queue_admin
from conversions import admin_dashboard, api, health, metrics

queue_admin.lock_down(admin.site)  # django-q2's Schedule admin would run any function: see queue_admin
admin.site.index_template = "admin/conversions/site_index.html"  # the admin index, with the dashboard's link

urlpatterns = [
    path("api/v1/conversions", api.ConversionsView.as_view(), name="conversions"),
    path("api/v1/health", health.health, name="health"),
    path("api/v1/schema", SpectacularAPIView.as_view(), name="schema"),
    path("metrics", metrics.metrics, name="metrics"),
    # Before admin.site.urls, whose catch-all would answer 404; admin_view: staff login, as every admin page.
    path("admin/dashboard/", admin.site.admin_view(admin_dashboard.dashboard_view), name="acceld-dashboard"),
    path("admin/", admin.site.urls),
    # The admin's CSS and JS, served by Django itself: the admin is small and internal, and this keeps
    # `make run` free of a separate static file server.
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
]

handler400 = "acceld_project.security.bad_request"  # a Host not in ALLOWED_HOSTS, among others
handler404 = "conversions.errors.not_found"
handler500 = "conversions.errors.server_error"
