"""The acceld config as read once by settings; services take it from here so tests can override it."""
from __future__ import annotations

from django.conf import settings

from acceleration_sdk.config import Config


def get_config() -> Config:
    return settings.ACCELD
