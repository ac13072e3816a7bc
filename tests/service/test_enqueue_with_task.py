"""With django-q2's ORM broker the queued run is written in the task's own transaction: both or neither."""
from __future__ import annotations

import pytest
from django.db import transaction
from django_q.models import OrmQ

from conversions import services, tasks
from conversions.models import ConversionTask
from tests.service.conftest import HOST

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


def test_orm_broker_queues_inside_the_transaction(acceld):
    assert tasks.queued_in_this_database()
    with pytest.raises(Rollback):
        with transaction.atomic():
            services.conversions_create(sources=[(f"{HOST}/library/a:1", ""), (f"{HOST}/library/b:1", "")],
                                        trigger="api")
            assert OrmQ.objects.count() == 2  # already there, in the same transaction
            raise Rollback
    assert (ConversionTask.objects.count(), OrmQ.objects.count()) == (0, 0)


def test_one_message_per_leader_none_for_followers_or_skips(acceld):
    # One event names a source once (duplicates in it are one task); a second event shares the conversion.
    created = services.conversions_create(sources=[(f"{HOST}/library/a:1", ""), (f"{HOST}/library/a:1", ""),
                                                   (f"{HOST}/library/a:1-esgz", "")], trigger="api")
    leader, skipped = created
    [follower] = services.conversions_create(sources=[(f"{HOST}/library/a:1", "")], trigger="api")
    assert follower.shared_with_id == leader.pk and skipped.skipped
    assert [m.task["args"] for m in OrmQ.objects.all()] == [(str(leader.pk), str(leader.run_token))]


def test_sync_mode_still_waits_for_the_commit(acceld, q_sync):
    assert not tasks.queued_in_this_database()
    with transaction.atomic():
        task = services.conversion_create(source=f"{HOST}/library/a:1", trigger="api")
        assert acceld.fake.calls == []  # not run inside its creator's transaction
    assert acceld.fake.calls == [task.source]
