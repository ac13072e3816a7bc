"""The authentication backend that applies django-axes' login throttling (see ``acceld_project.security``).

Its own module: settings.py imports ``security``, and django-axes' backend needs the app registry.
"""
from __future__ import annotations

import logging

from axes.backends import AxesStandaloneBackend
from axes.signals import user_locked_out

log = logging.getLogger("acceld.security")


class LoginThrottleBackend(AxesStandaloneBackend):
    """django-axes' check before the model backend, for logins that come with a request (the admin's form).

    ``authenticate()`` without a request comes from code (``Client.login`` in tests, a shell), not from a
    client on the network; there is no address to count, so the check is skipped instead of raising.
    """

    def authenticate(self, request=None, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def log_locked_out(sender, request=None, username=None, ip_address=None, **kwargs):
    """One line per refused login while locked out (django-axes logs only the moment the lock starts).
    The user name and address, never the password."""
    log.warning("admin login refused: user %r from %s is locked out after too many failed logins",
                username, ip_address)


# Connected here because Django imports the backends (this module) before any login is checked.
user_locked_out.connect(log_locked_out, dispatch_uid="acceld-log-locked-out")
