"""The MLflow UI as a user sees it: headless Chromium on a real `mlflow server` with a smoke sweep.

A fresh browser profile opens the link the launcher prints; the runs table must list the runs
by name with their dataset, and a run's page must draw its test_error chart. Screenshots of
both pages are left in the test's temp dir.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import LAUNCH, REPO, TINY_SWEEP, require, system_env, wait_for
from mlflow import MlflowClient

from pipeline.tracking import RUNS_VIEW
from sweeps.tracking_server import TrackingServer, tracking_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Headless, offline, and a fresh profile: what a first visit looks like.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)
PAGE_TIMEOUT_S = 90.0  # the UI's first load on a busy 2-core machine


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    """Yield a Selenium driver of Debian's headless Chromium with a fresh profile."""
    require("chromium", "chromedriver", packages="chromium, chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def smoke_server(tmp_path: Path) -> Iterator[TrackingServer]:
    """Yield an `mlflow server` of its own (the smoke experiment is this test's alone)."""
    root = tmp_path / "mlflow"
    with tracking_server(
        f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", root / "server.log"
    ) as server:
        yield server


def redrawn(check: Callable[[], Any]) -> Callable[[], Any]:
    """Return `check` with an element redrawn under it, or not drawn yet, counted as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def checked() -> Any:
        try:
            return check()
        except (StaleElementReferenceException, NoSuchElementException):
            return None  # e.g. a chart's title drawn before its plot, on a loaded machine

    return checked


def body_text(driver) -> str:
    """Return the visible text of the page."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


@pytest.mark.slow
def test_ui_opens_the_runs_with_datasets_and_charts(
    browser, smoke_server: TrackingServer, tmp_path: Path, sweep_data_root: Path
) -> None:
    from selenium.webdriver.common.by import By

    launched = subprocess.run(
        [
            *LAUNCH,
            "smoke",
            *TINY_SWEEP,
            "--limit=2",
            f"--tracking-uri={smoke_server.uri}",
            f"--storage={tmp_path / 'results'}",
            f"--data-root={sweep_data_root}",
        ],
        cwd=REPO,
        env=system_env(),
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    # The link a user clicks: the one the launcher printed.
    links = re.findall(r"MLflow UI: (\S+)", launched.stdout)
    assert links and all(link.endswith(RUNS_VIEW) for link in links), launched.stdout
    assert "progress: 2 finished, 0 running, 0 failed, 2 total" in launched.stdout
    status = subprocess.run(
        [*LAUNCH, "smoke", "--status", f"--storage={tmp_path / 'results'}"],
        cwd=REPO,
        env=system_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert "progress: 2 finished, 0 running, 0 failed, 2 total;" in status.stdout
    assert "ETA done" in status.stdout
    client = MlflowClient(smoke_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert len(names) == 2

    browser.get(links[-1])
    wait_for(
        redrawn(lambda: all(name in body_text(browser) for name in names)),
        f"the runs table to list {names}",
        PAGE_TIMEOUT_S,
    )
    time.sleep(1)  # let the last cells paint before the screenshot
    browser.save_screenshot(str(tmp_path / "runs-table.png"))
    assert "GenAI apps" not in body_text(browser) and "/runs" in browser.current_url

    def row_text(name: str) -> str:
        # The grid draws a row in two parts (pinned name columns, scrolled columns) that
        # share its aria-rowindex: the row of a run's name is both parts' text.
        (named,) = browser.find_elements(
            By.XPATH, f"//*[@role='row'][.//*[normalize-space(text())='{name}']]"
        )
        index = named.get_attribute("aria-rowindex")
        parts = browser.find_elements(By.XPATH, f"//*[@role='row'][@aria-rowindex='{index}']")
        return " ".join(part.text for part in parts)

    rows = wait_for(
        redrawn(lambda: [row_text(name) for name in names]), "the table rows", PAGE_TIMEOUT_S
    )
    for row in rows:
        assert "digitclutter-3 (" in row, row  # the Dataset column: name (digest)

    run = runs[0]
    run_page = (
        f"{smoke_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        "/model-metrics?workflowType=machine_learning"
    )
    browser.get(run_page)

    def filter_charts() -> bool:
        # React may redraw the field between finding it and typing: find it anew each time.
        fields = browser.find_elements(By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
        if not fields:
            return False
        fields[0].clear()
        fields[0].send_keys("test_error")
        return True

    def test_error_chart():
        titles = browser.find_elements(By.XPATH, "//h4[normalize-space(text())='test_error']")
        if not titles:
            return None
        # The chart's card: the title's nearest ancestor that holds a plot (its icons are
        # small svgs too), and in the plot the line of test_error over the epochs.
        plot = "./ancestor::*[.//*[name()='svg'][contains(@class, 'main-svg')]][1]"
        card = titles[0].find_element(By.XPATH, plot)
        lines = card.find_elements(By.CSS_SELECTOR, "svg.main-svg .scatterlayer path.js-line")
        return card if lines else None

    try:
        wait_for(redrawn(filter_charts), "the run page's metric charts", PAGE_TIMEOUT_S)
        card = wait_for(redrawn(test_error_chart), "the test_error chart", PAGE_TIMEOUT_S)
        time.sleep(1)
    finally:
        browser.save_screenshot(str(tmp_path / "run-test-error.png"))
    assert f"{run.info.run_name} (test_error)" in card.text
