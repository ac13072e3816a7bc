"""``?sync=true`` waits ``converter.timeout`` plus the queue's own retry margin (one setting for both)."""
from __future__ import annotations

import json
import time

import pytest

from conversions.models import ConversionTask, Status
from tests.service.conftest import HOST, post_webhook, push_payload

pytestmark = pytest.mark.django_db(transaction=True)


def test_sync_gives_up_after_timeout_plus_the_published_margin(acceld, api, settings):
    acceld(converter={"timeout": 1})
    settings.ACCELD_RETRY_MARGIN = 1  # the default (60 s) would hold this test for a minute
    started = time.monotonic()
    resp = post_webhook(api, push_payload(f"{HOST}/library/nginx:latest"), sync="true")  # no cluster runs it
    waited = time.monotonic() - started
    assert resp.status_code == 500
    assert "timed out waiting for the conversion" in json.loads(resp.content)["message"]
    assert 2 <= waited < 10
    assert ConversionTask.objects.get().status == Status.PROCESSING  # still queued: the reaper's business
