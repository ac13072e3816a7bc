"""The admin dashboard in a real browser (Debian's chromium + chromedriver) on a real service: a view-only
staff user reaches it from the admin index and reads the numbers the database holds, under the CSP with
its stylesheet applied; a converter's Retry button re-runs a failed conversion to COMPLETED."""
from __future__ import annotations

import json
import re
import signal
import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conversions.charts import duration_text
from tests.e2e.test_admin_browser import STAFF, browser, login, stack  # noqa: F401 - fixtures
from tests.service.images import push_image
from tests.service.stack import manifest_exists

pytestmark = pytest.mark.slow
STAFF_PASSWORD = "staff-e2e-pass-1"

# Read in the service's own database (manage.py shell): the oracle the page must agree with.
ORACLE = """
import json
from django.utils import timezone
from conversions.models import ConversionTask
days, done, bytes_ = {}, [], {}
for t in ConversionTask.objects.all():
    key = timezone.localtime(t.created).date().isoformat() + " " + t.status
    days[key] = days.get(key, 0) + 1
    if t.status == "COMPLETED" and not t.skipped and t.shared_with_id is None:
        done.append((t.finished - t.created).total_seconds())
        b = bytes_.setdefault(t.driver, [0, 0])
        b[0] += t.source_size
        b[1] += t.target_size
print(json.dumps({"days": days, "done": sorted(done), "bytes": bytes_}))
"""


def refused_by_csp(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


def test_dashboard_in_the_browser(browser, stack, registry, tmp_path):  # noqa: F811 - fixtures
    late = stack.source("library/late:1")
    assert stack.post(late, sync=True).status_code == 500  # FAILED: not pushed yet
    push_image(registry.host, "library/done:1", tmp_path)
    assert stack.post(stack.source("library/done:1"), sync=True).status_code == 200  # COMPLETED
    push_image(registry.host, "library/late:1", tmp_path)  # a retry can now succeed
    stack.manage("shell", "-c", STAFF)
    truth = json.loads(stack.manage("shell", "-c", ORACLE).stdout.strip().splitlines()[-1])  # after shell's banner
    assert len(truth["done"]) == 1 and sum(truth["days"].values()) == 2

    login(browser, stack, "viewer", STAFF_PASSWORD)
    browser.get(stack.url + "/admin/")
    browser.find_element(By.ID, "dashboard-link").click()
    WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith("/admin/dashboard/"))
    assert "Conversions dashboard" in browser.title
    for key, n in truth["days"].items():
        day, status = key.split()
        shown = browser.find_element(By.CSS_SELECTOR, f'#per-day tr[data-day="{day}"] td[data-status="{status}"]')
        assert shown.text == str(n), key
    assert browser.find_element(By.ID, "duration-count").text == "1"
    took = duration_text_seconds(truth["done"][0])
    assert browser.find_element(By.ID, "duration-median").text == took
    assert browser.find_element(By.ID, "duration-p95").text == took
    for driver, (bytes_in, bytes_out) in truth["bytes"].items():
        row = browser.find_element(By.CSS_SELECTOR, f'#bytes tr[data-driver="{driver}"]')
        cells = [c.get_attribute("data-bytes") for c in row.find_elements(By.CSS_SELECTOR, "td[data-bytes]")]
        assert cells == [str(bytes_in), str(bytes_out)] and bytes_in > 0
    failure = browser.find_element(By.CSS_SELECTOR, "#failures tbody tr")
    assert "library/late:1" in failure.text and "late" in failure.find_element(By.CSS_SELECTOR, "td.reason").text
    assert not browser.find_elements(By.CSS_SELECTOR, ".retry-button")  # a viewer starts nothing
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline-chart rect.bar-completed")
    # The stylesheet is applied (no inline style needed) and nothing was refused.
    assert browser.find_element(By.CSS_SELECTOR, ".dash").value_of_css_property("display") == "grid"
    assert browser.find_element(By.CSS_SELECTOR, "#timeline-chart rect.bar-failed").value_of_css_property(
        "fill") == "rgb(192, 57, 43)"
    assert not refused_by_csp(browser)
    # The task link leads to the task.
    failure.find_element(By.CSS_SELECTOR, "a").click()
    WebDriverWait(browser, 30).until(lambda b: "/change/" in b.current_url)
    assert "library/late:1" in browser.page_source

    browser.delete_all_cookies()
    login(browser, stack, "converter", STAFF_PASSWORD)
    browser.get(stack.url + "/admin/dashboard/")
    browser.find_element(By.CSS_SELECTOR, "#failures .retry-button").click()
    messages = WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "ul.messagelist"))[0]
    assert "Re-queued 1 failed task(s)." in messages.text
    assert not refused_by_csp(browser)
    stack.wait_tasks(lambda ts: all(t["status"] == "COMPLETED" for t in ts), what="the dashboard's retry")
    assert manifest_exists(registry.host, "library/late:1-esgz")
    browser.get(stack.url + "/admin/dashboard/")
    assert browser.find_element(By.CSS_SELECTOR, "#failures tbody").text == "No failures."
    assert browser.find_element(By.ID, "duration-count").text == "2"


def duration_text_seconds(seconds: float) -> str:
    import datetime

    return duration_text(datetime.timedelta(seconds=seconds))


def test_clusters_and_workers_with_the_redis_broker(tmp_path):
    """With Redis the qcluster's own reports (django-q2's Stat) reach the web server: the page lists the
    running cluster with its configured workers, and says nothing is visible once the cluster is gone."""
    from tests.service.stack import ServiceStack
    from tests.support.dbservers import RedisServer
    from tests.support.registry import RegistryServer
    from tests.support.stackctl import admin_session, reconfigure

    reg = RegistryServer(tmp_path / "registry").start()
    redis = RedisServer().start()
    stack = ServiceStack(tmp_path, reg.host, worker=3, extra_env={"ACCELD_ADMIN_PASSWORD": "dash-e2e-pass-1"})
    try:
        reconfigure(stack, lambda cfg: cfg["server"].update(redis=redis.url))
        stack.start()
        stack.manage("acceld_admin")
        admin = admin_session(stack, "admin", "dash-e2e-pass-1")
        deadline = time.monotonic() + 60
        while True:
            page = admin.get(stack.url + "/admin/dashboard/", timeout=30).text
            rows = re.findall(r"<tr><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td><td>(\d+)</td></tr>", page)
            if (rows and rows[0][0] != "Starting") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert rows == [("Idle", "3")], page[page.find('id="panel-queue"'):][:2000]
        assert 'id="queue-broker">0 / ?<' in page  # Redis says its queue length, not what workers hold
        stack.kill_qcluster(sig=signal.SIGTERM)  # a clean stop
        deadline = time.monotonic() + 30  # a report lives 3 s in Redis
        while "no qcluster has reported" not in admin.get(stack.url + "/admin/dashboard/", timeout=30).text:
            assert time.monotonic() < deadline, "the stopped cluster is still listed"
            time.sleep(0.5)
    finally:
        stack.stop()
        redis.stop()
        reg.stop()
