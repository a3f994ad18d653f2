"""End to end in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium):
the service under waitress on a loopback port, a radiologist and a compliance officer using it as people do.

Screenshots of every page are saved to ``$RADTRIAGE_ARTIFACTS/web`` (default: the test's temporary folder) so a
person can look at them after the run.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from radtriage.app.core.domain import Priority
from radtriage.app.factory import Components
from tests.support.data import copy_as_new_study, pydicom_data_dir
from tests.web.conftest import PASSWORD, Archive, order, wait_terminal

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="needs selenium (requirements-dev.txt)")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/bootstrap.sh --dev installs them)",
)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WAIT_S = 60


@pytest.fixture(scope="module")
def web_scorer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The shipped model with its Pneumonia operating point at 0, so the adult film (which the shipped model, rightly,
    does not flag) has a positive finding whose heatmap the page can toggle; weights and sha256 are untouched."""
    import json

    from radtriage.model.registry import SHIPPED_DEFAULT
    from radtriage.model.scorer import XrvScorer

    model = tmp_path_factory.mktemp("model") / "flags-pneumonia"
    shutil.copytree(SHIPPED_DEFAULT, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["thresholds"]["Pneumonia"] = 0.0
    (model / "manifest.json").write_text(json.dumps(manifest))
    return XrvScorer.from_artefact(model, max_threads=None)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    base = os.environ.get("RADTRIAGE_ARTIFACTS")
    folder = Path(base) / "web" if base else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def base_url(app: Flask, components: Components) -> Iterator[str]:
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, name="web-test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=5)


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def browser(tmp_path: Path, downloads: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Any, timeout: float = WAIT_S) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def sign_in(driver: WebDriver, base_url: str, username: str) -> None:
    driver.get(f"{base_url}/login")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ".userbox")))


def test_radiologist_sees_a_new_stat_study_rise_to_the_top_and_toggles_its_heatmap(
    browser: WebDriver, base_url: str, components: Components, archive: Archive, screenshots: Path
) -> None:
    # A few routine studies are already on the worklist, one of them not analysable.
    for accession, study in (("ACC-R1", archive.chest), ("ACC-R2", archive.extremity)):
        _o, job = order(components, study, accession=accession, patient=f"Patient/{accession}")
        wait_terminal(components, job.id)

    browser.get(f"{base_url}/worklist")
    assert "/login" in browser.current_url  # not signed in: sent to the sign-in page first
    browser.save_screenshot(str(screenshots / "01-sign-in.png"))
    sign_in(browser, base_url, "rad")
    assert browser.current_url.endswith("/worklist")
    first = browser.find_elements(By.CSS_SELECTOR, "#worklist-rows tr")
    assert [r.find_element(By.CSS_SELECTOR, ".study-link").text for r in first] == ["ACC-R1", "ACC-R2"]

    # A STAT order arrives while the page is open: it appears at the top without a reload, then gets scored.
    marker = browser.execute_script("window.__notReloaded = true; return window.__notReloaded;")
    assert marker is True
    stat_study = copy_as_new_study(pydicom_data_dir() / "RG1_J2KI.dcm", archive.root)
    _o, stat_job = order(components, stat_study, priority=Priority.STAT, accession="ACC-STAT", patient="Patient/s1")
    wait_terminal(components, stat_job.id)
    top_link = (By.CSS_SELECTOR, "#worklist-rows tr:first-child .study-link")
    wait_for(browser, EC.text_to_be_present_in_element(top_link, "ACC-STAT"))
    wait_for(browser, EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#worklist-rows tr:first-child"), "done"))
    assert browser.execute_script("return window.__notReloaded === true") is True
    top = browser.find_element(By.CSS_SELECTOR, "#worklist-rows tr:first-child")
    assert "STAT" in top.text and "Pneumonia" in top.text
    assert "Patient/s1" not in browser.page_source  # masked by default
    browser.save_screenshot(str(screenshots / "02-worklist.png"))

    # Open it from the keyboard (filters first, then the rows), even while the list redraws itself: the image
    # loads, and toggling a heatmap draws it as an overlay.
    browser.find_element(By.ID, "q").click()
    for _ in range(20):  # the filters, Apply, Clear, the sortable column headers, then the first study
        browser.switch_to.active_element.send_keys(Keys.TAB)
        if browser.switch_to.active_element.text == "ACC-STAT":
            break
    assert browser.switch_to.active_element.text == "ACC-STAT"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, lambda d: d.find_element(By.ID, "viewport").get_attribute("data-loaded") == "1")
    toggle = browser.find_element(By.CSS_SELECTOR, '.heatmap-toggle[data-label="Pneumonia"]')
    toggle.click()
    wait_for(browser, lambda d: "Pneumonia" in (d.find_element(By.ID, "viewport").get_attribute("data-overlays") or ""))
    browser.find_element(By.ID, "zoom-in").click()
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(screenshots / "03-study-heatmap.png"))
    toggle.click()
    wait_for(browser, lambda d: d.find_element(By.ID, "viewport").get_attribute("data-overlays") == "")
    assert "Patient/s1" not in browser.page_source

    # The not-analysed study says why, and the model page renders.
    browser.get(f"{base_url}/worklist?q=ACC-R2")
    browser.find_element(By.CSS_SELECTOR, ".study-link").click()
    assert "not a chest" in wait_for(browser, EC.presence_of_element_located((By.ID, "study-failed"))).text
    # Not analysed, but still a radiograph a person can look at.
    wait_for(browser, lambda d: d.find_element(By.ID, "viewport").get_attribute("data-loaded") == "1")
    browser.save_screenshot(str(screenshots / "04-study-not-analysed.png"))
    browser.get(f"{base_url}/model")
    wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, ".plots img")))
    browser.save_screenshot(str(screenshots / "05-model.png"))
    browser.set_window_size(1440, 3000)
    browser.save_screenshot(str(screenshots / "05-model-full.png"))

    # Every view of the patient's study was audited under the radiologist's name.
    from radtriage.compliance.audit_store import AuditFilter

    reads, _ = components.audit.search(AuditFilter(kind="result-read", patient="Patient/s1"), limit=100)
    views = {e.resource_text.split('"view","valueString":"')[1].split('"')[0] for e in reads}
    assert {"study", "image", "heatmap:Pneumonia"} <= views
    assert all('"value":"rad"' in e.resource_text for e in reads)


def test_compliance_officer_exports_an_audit_range_and_verifies_it(
    browser: WebDriver, base_url: str, components: Components, archive: Archive, downloads: Path, screenshots: Path
) -> None:
    _o, job = order(components, archive.chest, accession="ACC-C1", patient="Patient/c1")
    wait_terminal(components, job.id)
    sign_in(browser, base_url, "comp")
    assert browser.current_url.endswith("/compliance")
    assert "Worklist" not in browser.find_element(By.CSS_SELECTOR, ".mainnav").text  # not for this role

    from datetime import UTC, datetime

    today = datetime.now(UTC).strftime("%m%d%Y")  # how Chromium's date input takes typed dates (en-US)
    browser.find_element(By.ID, "start").send_keys(today)
    browser.find_element(By.ID, "end").send_keys(today)
    Select(browser.find_element(By.ID, "kind")).select_by_value("order-received")
    browser.find_element(By.ID, "search-audit").click()
    total = wait_for(browser, EC.presence_of_element_located((By.ID, "audit-total"))).text
    assert total.startswith("1 record")
    assert "Patient/c1" in browser.find_element(By.ID, "audit-results").text
    browser.save_screenshot(str(screenshots / "06-compliance-search.png"))

    browser.find_element(By.ID, "export-audit").click()
    exported = wait_for(browser, lambda _d: [p for p in downloads.glob("radtriage-audit-*.ndjson")] or False)
    export_file = exported[0]
    assert '"order-received"' in export_file.read_text("utf-8")

    browser.find_element(By.ID, "export_file").send_keys(str(export_file))
    browser.find_element(By.ID, "verify-export").click()
    result = wait_for(browser, EC.presence_of_element_located((By.ID, "verification")))
    assert "Verified" in result.text and "1 record" in result.text
    browser.save_screenshot(str(screenshots / "07-compliance-verified.png"))

    # The same file, changed by one character, fails verification and says which record.
    tampered = downloads / "tampered.ndjson"
    tampered.write_text(export_file.read_text("utf-8").replace("order-received", "order-receivex", 1), "utf-8")
    browser.find_element(By.ID, "export_file").send_keys(str(tampered))
    browser.find_element(By.ID, "verify-export").click()
    result = wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "#verification.broken")))
    assert "failed" in result.text
    browser.save_screenshot(str(screenshots / "08-compliance-broken.png"))

    # An export with no rows says so instead of handing over an empty file.
    browser.get(f"{base_url}/compliance?search=1&client=nobody-by-this-name")
    browser.find_element(By.ID, "export-audit").click()
    assert "nothing to export" in wait_for(browser, EC.presence_of_element_located((By.ID, "compliance-message"))).text


def test_an_expired_session_shows_a_message_and_leads_back_to_sign_in(
    browser: WebDriver, base_url: str, app: Flask
) -> None:
    sign_in(browser, base_url, "rad")
    # Sign out behind the page's back (another tab, or the idle timeout): the next poll notices.
    browser.delete_all_cookies()
    banner = wait_for(browser, EC.visibility_of_element_located((By.ID, "session-banner")), timeout=15)
    assert "Sign in again" in banner.text
    browser.find_element(By.LINK_TEXT, "Sign in again").click()
    assert (
        "Your session has expired"
        in wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, ".banner-info"))).text
    )
