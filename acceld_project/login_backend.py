"""The authentication backend that applies django-axes' login throttling (see ``acceld_project.security``).

Its own module: settings.py imports ``security``, and django-axes' backend needs the app registry.
"""
from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class LoginThrottleBackend(AxesStandaloneBackend):
    """django-axes' check before the model backend, for logins that come with a request (the admin's form).

    ``authenticate()`` without a request comes from code (``Client.login`` in tests, a shell), not from a
    client on the network; there is no address to count, so the check is skipped instead of raising.
    """

    def authenticate(self, request=None, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
