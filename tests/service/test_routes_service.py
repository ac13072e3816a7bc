"""converter.routes in the service: one task per matching route, ignored pushes, loop prevention, --route,
route and target in the list API and the admin, a route's own target and driver handed to the converter."""
from __future__ import annotations

import datetime
import json

import pytest
from django.db import transaction
from django.utils import timezone

from acceleration_sdk import cli_task
from conversions import services
from conversions.errors import IllegalParameter
from conversions.models import ConversionTask, Status
from tests.service.conftest import AUTH, HOST, OPEN_HOST, post_webhook, push_payload
from tests.service.test_metrics import scrape

pytestmark = pytest.mark.django_db(transaction=True)

ROUTES = [
    {"name": "releases-nydus", "match": {"repository": ["library/*"], "tag": ["v*", "latest"],
                                         "exclude_tag": ["*-debug"]},
     "target": "{host}/{project}-accel/{rest}:{tag}-nydus", "driver": {"type": "nydus"}},
    {"name": "all-esgz", "match": {"repository": ["library/*", "team/*"]}, "target": "{host}/{path}:{tag}-esgz"},
    {"name": "mirror", "match": {"tag": ["mirror*"]}, "target": f"{OPEN_HOST}/{{path}}:{{tag}}"},
]


@pytest.fixture
def routed(acceld):
    acceld(converter={"routes": ROUTES}, metric={"enabled": True}, server={"public_list": True})
    return acceld


def by_route(tasks) -> dict[str, ConversionTask]:
    return {t.route: t for t in tasks}


def ignored(api) -> float:
    return scrape(api)["acceld_pushes_ignored"][1]["acceld_pushes_ignored_total"]


def test_each_matching_route_makes_its_own_task(routed, api):
    resp = post_webhook(api, push_payload(f"{HOST}/library/nginx:v1"), headers={"X-Harbor-Event-Id": "ev-1"})
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n')
    tasks = by_route(ConversionTask.objects.all())
    assert set(tasks) == {"releases-nydus", "all-esgz"}
    assert tasks["releases-nydus"].target == f"{HOST}/library-accel/nginx:v1-nydus"
    assert tasks["releases-nydus"].driver == "nydus" and tasks["all-esgz"].driver == "estargz"
    assert tasks["all-esgz"].target == f"{HOST}/library/nginx:v1-esgz"
    # both lead (own dedup): the same source, two targets, two conversions
    assert all(t.status == Status.PROCESSING and t.shared_with_id is None for t in tasks.values())
    # a redelivery finds both, makes none
    post_webhook(api, push_payload(f"{HOST}/library/nginx:v1"), headers={"X-Harbor-Event-Id": "ev-1"})
    assert ConversionTask.objects.count() == 2


def test_a_push_no_route_matches_is_ok_no_task_and_counted(routed, api):
    before = ignored(api)
    resp = post_webhook(api, push_payload(f"{HOST}/other/app:v1"))
    assert (resp.status_code, resp.content) == (200, b'"Ok"\n')
    assert ConversionTask.objects.count() == 0
    assert ignored(api) == before + 1
    # excluded tag: only the route that does not exclude it runs
    post_webhook(api, push_payload(f"{HOST}/library/nginx:v1-debug"))
    assert [t.route for t in ConversionTask.objects.all()] == ["all-esgz"]


def test_a_redelivered_ignored_push_counts_once(routed, api):
    before = ignored(api)
    other = push_payload(f"{HOST}/other/app:v1", f"{HOST}/other/db:v1")
    for _ in range(3):  # Harbor redelivers an event it thinks failed: same id, same images
        assert post_webhook(api, other, headers={"X-Harbor-Event-Id": "ev-ignored"}).status_code == 200
    assert ignored(api) == before + 2
    # one more image in a redelivery counts; another event of the same images counts again
    post_webhook(api, push_payload(f"{HOST}/other/app:v1", f"{HOST}/other/web:v1"),
                 headers={"X-Harbor-Event-Id": "ev-ignored"})
    assert ignored(api) == before + 3
    post_webhook(api, other, headers={"X-Harbor-Event-Id": "ev-ignored-2"})
    assert ignored(api) == before + 5
    # CloudEvents: the event's own id
    cloud = {"specversion": "1.0", "type": "harbor.artifact.pushed", "source": "harbor", "id": "ce-7",
             "data": other["event_data"]}
    for _ in range(2):
        post_webhook(api, cloud, content_type="application/cloudevents+json")
    assert ignored(api) == before + 7
    # no id: nothing tells a redelivery from a new push (Harbor's default format sends none)
    for _ in range(2):
        post_webhook(api, push_payload(f"{HOST}/other/app:v1"))
    assert ignored(api) == before + 9
    assert ConversionTask.objects.count() == 0


def test_ignored_event_ids_are_forgotten_after_a_week(routed, api):
    from conversions import counters
    from conversions.models import IgnoredPush

    counters.count_ignored([f"{HOST}/other/app:v1"], event_id="old")
    IgnoredPush.objects.update(seen=timezone.now() - counters.IGNORED_MEMORY - datetime.timedelta(seconds=1))
    before = ignored(api)
    post_webhook(api, push_payload(f"{HOST}/other/app:v2"), headers={"X-Harbor-Event-Id": "new"})
    assert list(IgnoredPush.objects.values_list("event_id", flat=True)) == ["new"]  # the old one pruned
    assert ignored(api) == before + 1


@pytest.mark.parametrize("output", [
    f"{HOST}/library-accel/nginx:v1-nydus",  # a target tag
    f"{HOST}/library-accel/nginx:handmade",  # anything in a target repository (another project)
    f"{HOST}/library/nginx:v1-esgz",  # a target tag in the source repository
    f"{OPEN_HOST}/library/nginx:mirror-1",  # another host's target repository
])
def test_route_outputs_never_trigger(routed, api, output):
    before = ignored(api)
    resp = post_webhook(api, push_payload(output), auth=AUTH if output.startswith(HOST) else None)
    assert resp.status_code == 200
    assert ConversionTask.objects.count() == 0
    assert ignored(api) == before + 1


def test_route_parameter_picks_one_and_refuses_unknown_or_output(routed, api):
    url = "/api/v1/conversions?route=all-esgz"
    body = json.dumps(push_payload(f"{HOST}/library/nginx:v2")).encode()
    resp = api.generic("POST", url, body, content_type="application/json", headers={"Authorization": AUTH})
    assert resp.status_code == 200
    assert [t.route for t in ConversionTask.objects.all()] == ["all-esgz"]
    with pytest.raises(IllegalParameter, match="unknown route 'nope'"):
        services.conversion_create(source=f"{HOST}/library/nginx:v2", route="nope")
    with pytest.raises(IllegalParameter, match="output of route 'all-esgz'"):
        services.conversion_create(source=f"{HOST}/library/nginx:v2-esgz", route="all-esgz")
    resp = api.generic("POST", "/api/v1/conversions?route=nope", body, content_type="application/json",
                       headers={"Authorization": AUTH})
    assert resp.status_code == 400 and "unknown route" in json.loads(resp.content)["message"]


def test_run_hands_the_route_target_and_driver_to_the_converter(routed, q_sync):
    with transaction.atomic():
        tasks = services.conversions_create(sources=[(f"{HOST}/library/redis:latest", "")], trigger="api")
    assert len(tasks) == 2
    calls = sorted(routed.fake.routed)
    assert calls == [(f"{HOST}/library/redis:latest", f"{HOST}/library-accel/redis:latest-nydus", "nydus"),
                     (f"{HOST}/library/redis:latest", f"{HOST}/library/redis:latest-esgz", "estargz")]
    done = by_route(ConversionTask.objects.all())
    assert done["releases-nydus"].status == Status.COMPLETED and done["releases-nydus"].driver == "nydus"


def test_metrics_show_tasks_per_route(routed, api, q_sync):
    services.conversion_create(source=f"{HOST}/library/redis:v1", route="releases-nydus")
    services.conversion_create(source=f"{HOST}/library/redis:fail", route="all-esgz")
    kind, samples = scrape(api)["acceld_route_tasks"]
    assert kind == "gauge"
    assert samples["acceld_route_tasks{route=releases-nydus}{status=COMPLETED}"] == 1
    assert samples["acceld_route_tasks{route=all-esgz}{status=FAILED}"] == 1
    assert samples["acceld_route_tasks{route=mirror}{status=COMPLETED}"] == 0


def test_one_route_failing_leaves_the_other_and_retry_keeps_the_route(routed, q_sync):
    with transaction.atomic():
        services.conversions_create(sources=[(f"{HOST}/library/redis:fail", "")], trigger="api")
    tasks = by_route(ConversionTask.objects.all())
    assert set(tasks) == {"all-esgz"}  # fail* matches no release route
    assert tasks["all-esgz"].status == Status.FAILED
    retried = services.conversion_retry(task_id=tasks["all-esgz"].pk)
    assert retried.route == "all-esgz" and retried.target == f"{HOST}/library/redis:fail-esgz"


def test_a_removed_route_fails_its_queued_task_with_a_reason(routed):
    task = services.conversion_create(source=f"{HOST}/team/app:v1")
    assert task.route == "all-esgz"
    routed(converter={"routes": [ROUTES[0]]})
    services.conversion_run(task_id=task.pk, token=task.run_token)
    task.refresh_from_db()
    assert task.status == Status.FAILED and "route 'all-esgz' is no longer in converter.routes" in task.reason


def test_a_run_refuses_a_target_the_config_no_longer_gives(routed):
    """A retry or a queued run must not push where the config no longer sends it: a route now writing
    elsewhere (or to a host that left provider.source), or a task from before converter.routes, which would
    write <tag><suffix> beside its source, past every route's match."""
    task = services.conversion_create(source=f"{HOST}/team/app:v1")
    moved = dict(ROUTES[1], target="{host}/{path}:{tag}-moved")
    routed(converter={"routes": [ROUTES[0], moved]})
    services.conversion_run(task_id=task.pk, token=task.run_token)
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert f"now writes {HOST}/team/app:v1-moved, not {HOST}/team/app:v1-esgz" in task.reason

    routed(converter={})  # a task made without routes ...
    old = services.conversion_create(source=f"{HOST}/team/app:v2")
    assert old.route == ""
    routed(converter={"routes": ROUTES})  # ... then routes were configured
    services.conversion_run(task_id=old.pk, token=old.run_token)
    old.refresh_from_db()
    assert old.status == Status.FAILED and "made before converter.routes was configured" in old.reason


def test_a_target_that_cannot_be_made_is_a_failed_task(acceld):
    acceld(converter={"routes": [{"name": "split", "target": "{host}/{project}-accel/{rest}:{tag}"}]})
    task = services.conversion_create(source=f"{OPEN_HOST}/nginx:v1")  # no {rest} in a one-part path
    assert task.status == Status.FAILED and "route 'split' gives no valid target" in task.reason


def test_list_api_shows_route_and_target_both_paths(routed, api):
    services.conversion_create(source=f"{HOST}/team/app:v1")
    fast = json.loads(api.get("/api/v1/conversions").content)
    slow = json.loads(api.get("/api/v1/conversions?paginated=true").content)["results"]
    for rows in (fast, slow):
        assert (rows[0]["route"], rows[0]["target"]) == ("all-esgz", f"{HOST}/team/app:v1-esgz")


def test_routes_absent_keeps_acceld_behaviour(acceld, api):
    post_webhook(api, push_payload(f"{HOST}/library/nginx:v1"))
    task = ConversionTask.objects.get()
    assert (task.route, task.target) == ("", f"{HOST}/library/nginx:v1-esgz")
    with pytest.raises(IllegalParameter, match="converter.routes is not configured"):
        services.conversion_create(source=f"{HOST}/library/nginx:v1", route="x")


def test_accelctl_task_create_route(routed, live_server, capsys):
    addr = live_server.url.removeprefix("http://")
    assert cli_task.main(["create", "--addr", addr, "--auth", AUTH, "--route", "releases-nydus",
                          f"{HOST}/library/nginx:v9"]) == 0
    assert [t.route for t in ConversionTask.objects.all()] == ["releases-nydus"]
    assert cli_task.main(["create", "--addr", addr, "--auth", AUTH, "--route", "nope", f"{HOST}/library/x:v1"]) == 1
    assert "unknown route 'nope'" in capsys.readouterr().err


def test_create_without_a_matching_route_says_why(routed):
    with pytest.raises(IllegalParameter, match="no route's match selects it"):
        services.conversion_create(source=f"{HOST}/other/app:dev")
    with pytest.raises(IllegalParameter, match="output of route 'releases-nydus'"):
        services.conversion_create(source=f"{HOST}/library-accel/app:v1-nydus")
    # naming a route does not skip its match (the operator's filter of what reaches that target; anyone with a
    # webhook secret can name a route): refused with the reason, no task
    with pytest.raises(IllegalParameter, match="route 'releases-nydus' does not select"):
        services.conversion_create(source=f"{HOST}/other/app:dev", route="releases-nydus")
    assert not ConversionTask.objects.filter(source=f"{HOST}/other/app:dev").exists()
    # only the admin's "Convert again" of a task that went through the route forces it
    task = services.conversion_create(source=f"{HOST}/other/app:dev", route="releases-nydus", force=True)
    assert task.target == f"{HOST}/other-accel/app:dev-nydus"


def test_two_routes_meeting_on_one_target_make_one_task(acceld, api):
    # different targets in general (accepted at start-up), the same one for the tag v2
    acceld(converter={"routes": [{"name": "by-tag", "target": "{host}/{path}:{tag}-x"},
                                 {"name": "pinned", "target": "{host}/{path}:v2-x"}]})
    post_webhook(api, push_payload(f"{OPEN_HOST}/team/app:v2"), auth=None)
    assert [(t.route, t.target) for t in ConversionTask.objects.all()] == [("by-tag", f"{OPEN_HOST}/team/app:v2-x")]
    post_webhook(api, push_payload(f"{OPEN_HOST}/team/app:v3"), auth=None)
    assert ConversionTask.objects.filter(source=f"{OPEN_HOST}/team/app:v3").count() == 2
