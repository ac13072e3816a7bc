"""A real browser (Debian's chromium + chromedriver, driven by Selenium) in the admin of a real service:
log in, filter FAILED tasks, run Retry, watch the task complete; start a conversion from the admin form."""
from __future__ import annotations

import shutil
import tempfile
import time

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.service.images import push_image
from tests.service.stack import ServiceStack, manifest_exists
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.slow
PASSWORD = "admin-e2e-pass-1"


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed (apt-get install chromium chromium-driver)"
    return found


def chromedriver_binary() -> str:
    found = shutil.which("chromedriver") or shutil.which("/usr/lib/chromium/chromedriver")
    assert found, "chromedriver is not installed (apt-get install chromium-driver)"
    return found


@pytest.fixture
def browser(tmp_path):
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP violations land in the console
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver_binary()), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def registry(tmp_path):
    reg = RegistryServer(tmp_path / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture
def stack(registry, tmp_path):
    s = ServiceStack(tmp_path, registry.host, extra_env={"ACCELD_ADMIN_PASSWORD": PASSWORD}).start()
    out = s.manage("acceld_admin")
    assert "superuser 'admin'" in out.stdout
    yield s
    s.stop()


def login(browser, stack) -> None:
    browser.get(stack.url + "/admin/login/?next=/admin/conversions/conversiontask/")
    browser.find_element(By.NAME, "username").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    assert "Select conversion task to view" in browser.page_source or "conversion task" in browser.title.lower()


def row_status(browser, source: str) -> str:
    for row in browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"):
        if source in row.text:
            return row.find_element(By.CSS_SELECTOR, "td.field-status").text
    return ""


def test_retry_a_failed_task_from_the_admin(browser, stack, registry, tmp_path):
    src = stack.source("library/late:1")
    # The image is not there yet: the conversion fails with the registry's reason.
    resp = stack.post(src, sync=True)
    assert resp.status_code == 500 and resp.json()["code"] == "ERR_CONVERT_FAILED"
    assert stack.post(stack.source("library/other:1"), sync=True).status_code == 500
    push_image(registry.host, "library/other:1", tmp_path)
    assert stack.post(stack.source("library/other:1"), sync=True).status_code == 200  # a COMPLETED one too
    push_image(registry.host, "library/late:1", tmp_path)  # now the retry can succeed

    login(browser, stack)
    browser.find_element(By.LINK_TEXT, "FAILED").click()  # the status filter
    assert "status__exact=FAILED" in browser.current_url
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert {r.find_element(By.CSS_SELECTOR, "td.field-status").text for r in rows} == {"FAILED"}
    target = next(r for r in rows if src in r.text)
    assert "late" in target.find_element(By.CSS_SELECTOR, "td.field-reason_display").text  # the reason, whole
    target.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    assert "Re-queued 1 failed task(s)." in browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text

    browser.get(stack.url + "/admin/conversions/conversiontask/")
    deadline = time.monotonic() + 120
    while row_status(browser, src) != "COMPLETED":
        assert time.monotonic() < deadline, f"task did not complete:\n{stack.logs()}"
        time.sleep(1)
        browser.refresh()
    assert manifest_exists(registry.host, "library/late:1-esgz")
    task = next(t for t in stack.tasks() if t["source"] == src)
    assert task["status"] == "COMPLETED" and task["reason"] == "" and task["trigger"] == "api"


def test_convert_an_image_from_the_admin_form(browser, stack, registry, tmp_path):
    push_image(registry.host, "library/formed:1", tmp_path)
    login(browser, stack)
    browser.find_element(By.ID, "convert-image").click()
    field = browser.find_element(By.NAME, "source")
    field.send_keys(stack.source("library/formed:1"))
    browser.find_element(By.NAME, "_convert").click()
    assert f"Started the conversion of {stack.source('library/formed:1')}." in browser.page_source
    stack.wait_tasks(lambda ts: any(t["source"].endswith("formed:1") and t["status"] == "COMPLETED" for t in ts),
                     what="the admin's conversion")
    assert manifest_exists(registry.host, "library/formed:1-esgz")
    assert next(t for t in stack.tasks() if t["source"].endswith("formed:1"))["trigger"] == "admin"


def test_the_admin_works_under_its_content_security_policy(browser, stack, registry, tmp_path):
    """Every kind of admin page in the real browser with the CSP on: the header is there, nothing is refused
    (a refused inline script or style is a console error naming the Content Security Policy), and the
    page's own script and style ran (the action bar's JS, the stylesheet's layout)."""
    assert "script-src 'self'" in requests.get(stack.url + "/admin/login/", timeout=30).headers["Content-Security-Policy"]
    assert stack.post(stack.source("library/missing:1"), sync=True).status_code == 500  # one FAILED task to show
    browser.get(stack.url + "/admin/login/")
    login(browser, stack)
    task = stack.tasks()[0]["id"]
    pages = ["/admin/", "/admin/conversions/conversiontask/", f"/admin/conversions/conversiontask/{task}/change/",
             "/admin/conversions/conversiontask/convert/", "/admin/django_q/failure/", "/admin/auth/user/",
             "/admin/auth/user/add/"]
    for path in pages:
        browser.get(stack.url + path)
        assert "Django administration" in browser.title or "acceld" in browser.title.lower(), path
        refused = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not refused, (path, refused)
    # The change list's JS ran (it counts the selected rows), and the admin's CSS is applied (not inline).
    browser.get(stack.url + "/admin/conversions/conversiontask/")
    browser.find_element(By.CSS_SELECTOR, "input.action-select").click()
    assert "1 of 1 selected" in browser.find_element(By.CSS_SELECTOR, ".action-counter").text
    header = browser.find_element(By.ID, "header")
    assert header.value_of_css_property("display") == "flex"
