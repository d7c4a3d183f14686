"""The review page in a real headless Chromium: an inspector labels images with the keyboard and the mouse,
and the labels land in the database."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from fabguard.client import Client
from fabguard.serve import db
from tests.serve.conftest import TOKEN


@pytest.fixture
def settings(settings):
    """Every PASS and REJECT audited, so each inspected image reaches the queue."""
    settings.audit_pass_rate = settings.audit_reject_rate = 1.0
    return settings


def inspect_all(served, images) -> list[dict]:
    with Client(served.url, token=TOKEN) as api:
        answers = [api.inspect(im, "WF-9", k) for k, im in enumerate(images)]
        deadline = time.monotonic() + 20  # heatmaps and images are written after the answer
        files = [served.home / "images" / f"{a['inspection_id']}.png" for a in answers]
        while not all(f.is_file() for f in files) or \
                any(api.http.get(a["heatmap_url"]).status_code == 404 for a in answers):
            assert time.monotonic() < deadline, "stored images or heatmaps did not appear"
            time.sleep(0.05)
    return answers


def shown(browser, previous: str | None = None, timeout: float = 10) -> str:
    """The inspection id the page shows, once it differs from ``previous``."""
    def current(b):
        return b.find_element(By.TAG_NAME, "body").get_attribute("data-inspection") or None
    WebDriverWait(browser, timeout).until(lambda b: current(b) not in (None, previous))
    return current(browser)


def press(browser, key: str) -> None:
    browser.find_element(By.TAG_NAME, "body").send_keys(key)


def images_loaded(browser) -> bool:
    return browser.execute_script(
        "return ['image', 'heatmap'].every(id => { const i = document.getElementById(id);"
        " return i.complete && i.naturalWidth > 0; });")


def test_inspector_labels_through_the_page(browser, served, wafer_images, tmp_path):
    images = wafer_images[0][:2] + wafer_images[0][4:6]  # 2 normal, 2 defective: PASS and REJECT
    answers = inspect_all(served, images)
    browser.get(served.url + "/review")
    assert browser.find_element(By.ID, "item").get_attribute("hidden") is not None  # nobody named yet
    browser.find_element(By.ID, "inspector").send_keys("Ann Lee")
    browser.find_element(By.ID, "token").send_keys(TOKEN + "\n")  # Enter submits the form
    first = shown(browser)
    WebDriverWait(browser, 10).until(images_loaded)
    browser.save_screenshot(str(tmp_path / "review.png"))
    assert (tmp_path / "review.png").stat().st_size > 10_000
    by_id = {a["inspection_id"]: a for a in answers}
    facts = {k: browser.find_element(By.ID, k).text for k in ("decision", "version", "score", "reason")}
    assert facts["version"] == by_id[first]["model_version"] and facts["decision"].startswith(by_id[first]["decision"])
    assert float(facts["score"]) == pytest.approx(by_id[first]["anomaly_score"], rel=1e-3)  # 4 significant digits
    assert "audit sample" in facts["reason"]
    assert "No reconstruction" in browser.find_element(By.CLASS_NAME, "absent").text

    press(browser, "n")  # key N: normal
    second = shown(browser, first)
    press(browser, "2")  # key 2: the second defect type
    press(browser, "d")  # key D: defective
    third = shown(browser, second)
    Select(browser.find_element(By.ID, "defect-type")).select_by_value("crack")
    browser.find_element(By.ID, "defective").click()
    fourth = shown(browser, third)
    browser.find_element(By.ID, "normal").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "empty").is_displayed())

    with served.engine.connect() as c:
        stored = {r.inspection_id: (r.inspector, r.label, r.defect_type) for r in c.execute(sa.select(db.reviews))}
    assert stored == {first: ("Ann Lee", "normal", None), second: ("Ann Lee", "defective", "particle"),
                      third: ("Ann Lee", "defective", "crack"), fourth: ("Ann Lee", "normal", None)}
    assert set(stored) == set(by_id)


def test_page_refuses_a_wrong_token_and_keeps_the_image(browser, served, wafer_images):
    [answer] = inspect_all(served, wafer_images[0][:1])
    browser.get(served.url + "/review")
    browser.execute_script("sessionStorage.clear()")
    browser.get(served.url + "/review")
    browser.find_element(By.ID, "inspector").send_keys("bob")
    browser.find_element(By.ID, "token").send_keys("wrong\n")
    assert shown(browser) == answer["inspection_id"]
    press(browser, "d")
    WebDriverWait(browser, 10).until(lambda b: "wrong bearer token" in b.find_element(By.ID, "message").text)
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-inspection") == answer["inspection_id"]
    with served.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(db.reviews)).scalar_one() == 0
