"""Browser fixtures for pages the service serves: a headless Chromium driven by selenium through the system's
chromedriver (Debian's ``chromium`` and ``chromium-driver``; nothing is downloaded: Selenium Manager is never
asked because both paths are given), and the service on loopback.

``tests/serve/conftest.py`` imports both, so a test module just asks for them::

    def test_page(browser, served):
        browser.get(served.url + "/review")

Under ``CI=true`` a missing browser FAILS the test (``.ci/run`` installs it); elsewhere it skips, as the
PostgreSQL tests do.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa


BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver")


def binaries() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None when either is not installed."""
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = next(filter(None, map(shutil.which, DRIVERS)), None)
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (selenium WebDriver) for the whole session, 1280 x 900."""
    found = binaries()
    if found is None:
        if os.environ.get("CI"):  # .ci/run installs them: a missing browser there is a failure, not a skip
            pytest.fail("chromium / chromedriver not installed; .ci/run installs Debian's chromium and "
                        "chromium-driver")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    # --no-sandbox: CI containers run as root or without user namespaces, where Chromium's sandbox cannot
    # start; the browser only loads the service under test on loopback.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@dataclass
class Served:
    """A live service: its base URL, settings (home, token) and an engine on its database."""

    url: str
    settings: object
    engine: sa.Engine

    @property
    def home(self) -> Path:
        return self.settings.home


@pytest.fixture
def served(settings):
    """The service (uvicorn, real sockets) on 127.0.0.1 with the test's ``settings``; the database engine
    is opened after the server migrated it."""
    from fabguard.serve import db

    from tests.serve.conftest import run_server  # here: conftest imports this module

    url, stop = run_server(settings)
    engine = db.create_engine(settings.db_url)
    yield Served(url, settings, engine)
    engine.dispose()
    stop()
