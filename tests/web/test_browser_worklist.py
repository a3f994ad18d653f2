# ruff: noqa: F811  (the fixtures imported from test_browser are parameters of the tests here)
"""The worklist and study page in headless Chromium as a radiologist uses them (issue 14): a new STAT study
raises a visible and audible alert, claim and mark read from the list, sorting by a column, numeric window/level
and distinct heatmap colours with a legend, and both pages at a 390 px phone width without sideways scrolling.

Screenshots go to ``$RADTRIAGE_ARTIFACTS/web`` (see test_browser.py); docs/screenshots/ holds copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from radtriage.app.core.domain import Priority
from radtriage.app.factory import Components
from tests.support.data import pydicom_data_dir
from tests.web.conftest import Archive, copy_as_new_study, order, wait_terminal
from tests.web.test_browser import (  # noqa: F401  (fixtures)
    base_url,
    browser,
    downloads,
    screenshots,
    sign_in,
    wait_for,
)

PHONE = (390, 844)


def settle(driver: WebDriver, condition: Any) -> Any:
    """Wait, tolerating elements replaced under the test: the list redraws its rows at every poll."""
    return WebDriverWait(driver, 60, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]).until(
        condition
    )


def click(driver: WebDriver, selector: str) -> None:
    """Click the element now matching `selector` (one atomic step, so a redraw cannot make it stale)."""
    assert driver.execute_script(
        "var e = document.querySelector(arguments[0]); if (e) { e.click(); } return !!e;", selector
    ), selector


def _fits(browser: WebDriver) -> bool:
    """Nothing on the page is wider than the window (no sideways scrolling)."""
    return bool(browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"))


def _phone(browser: WebDriver) -> None:
    browser.set_window_size(*PHONE)
    # The window size includes no browser chrome in headless mode; check what the page sees.
    assert browser.execute_script("return window.innerWidth") <= PHONE[0]


def test_a_new_stat_study_alerts_and_the_radiologist_claims_reads_and_sorts_from_the_list(
    browser: WebDriver,
    base_url: str,
    components: Components,
    archive: Archive,
    screenshots: Path,  # noqa: F811
) -> None:
    for accession, study in (("ACC-R1", archive.chest), ("ACC-R2", archive.extremity)):
        _o, job = order(components, study, accession=accession, patient=f"Patient/{accession}")
        wait_terminal(components, job.id)
    sign_in(browser, base_url, "rad")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#worklist-rows tr")) == 2)
    browser.find_element(By.ID, "sound-toggle").click()  # a click allows audio; a test tone plays
    table = browser.find_element(By.ID, "worklist")
    wait_for(browser, lambda _d: table.get_attribute("data-beeps") == "1")
    assert browser.find_element(By.ID, "stat-alert").get_attribute("hidden") is not None

    stat_study = copy_as_new_study(pydicom_data_dir() / "RG1_J2KI.dcm", archive.root)
    _o, stat_job = order(components, stat_study, priority=Priority.STAT, accession="ACC-STAT", patient="Patient/s1")
    wait_terminal(components, stat_job.id)
    alert = wait_for(browser, EC.visibility_of_element_located((By.ID, "stat-alert")))
    assert "NEW STAT STUDY" in alert.text.upper() and "ACC-STAT" in alert.text
    assert table.get_attribute("data-stat-alerts") == "1" and table.get_attribute("data-beeps") == "2"
    assert browser.title.startswith("(STAT)")
    first_row = "#worklist-rows tr:first-child"
    settle(browser, lambda d: "≥" in d.find_element(By.CSS_SELECTOR, first_row).text)
    top_text = settle(browser, lambda d: d.find_element(By.CSS_SELECTOR, first_row).text)
    assert "ACC-STAT" in top_text and "Pneumonia" in top_text
    settle(
        browser,
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
        ),
    )
    browser.save_screenshot(str(screenshots / "worklist-desktop.png"))

    # Claim the STAT study from the list, then mark it read: it leaves the list (shown greyed on request).
    click(browser, first_row + ' button[data-action="claim"]')
    settle(browser, lambda d: "claimed by rad" in d.find_element(By.CSS_SELECTOR, first_row).text)
    click(browser, first_row + ' button[data-action="read"]')
    settle(browser, lambda d: "ACC-STAT" not in d.find_element(By.ID, "worklist-rows").text)
    browser.find_element(By.ID, "read").click()
    browser.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    greyed = settle(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#worklist-rows tr.row-read").text)
    assert "ACC-STAT" in greyed and "read by rad" in greyed

    # Sort by arrival (newest first) by clicking the column header, then reverse it.
    browser.find_element(By.LINK_TEXT, "ARRIVED (UTC)").click()
    wait_for(browser, lambda d: "sort=arrived" in d.current_url)
    order_shown = "return [...document.querySelectorAll('#worklist-rows .study-link')].map(e => e.textContent)"
    assert browser.execute_script(order_shown) == ["ACC-STAT", "ACC-R2", "ACC-R1"]
    browser.find_element(By.PARTIAL_LINK_TEXT, "ARRIVED (UTC)").click()
    wait_for(browser, lambda d: "dir=desc" in d.current_url)
    assert browser.execute_script(order_shown) == ["ACC-R1", "ACC-R2", "ACC-STAT"]

    # At phone width the list is a column of cards, nothing wider than the screen.
    browser.get(f"{base_url}/worklist")
    _phone(browser)
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#worklist-rows tr")) == 2)
    assert _fits(browser)
    browser.save_screenshot(str(screenshots / "worklist-phone.png"))


def test_the_study_page_has_numeric_window_level_distinct_heatmap_colours_and_fits_a_phone(
    browser: WebDriver,
    base_url: str,
    components: Components,
    archive: Archive,
    screenshots: Path,  # noqa: F811
) -> None:
    _o, job = order(components, archive.chest, priority=Priority.URGENT, accession="ACC-V1", patient="Patient/v1")
    wait_terminal(components, job.id)
    result = components.store.get_result(job.id)
    assert result is not None and len(result.positive_findings) >= 2, "needs two flagged findings to compare colours"
    # Heatmaps are their own job after the Task completed: open the page once they are stored, or it redraws the
    # overlays under the test when they arrive.
    positives = [f.label for f in result.positive_findings]
    WebDriverWait(browser, 120, poll_frequency=0.2).until(
        lambda _d: components.store.heatmap_labels(job.id) == positives
    )
    sign_in(browser, base_url, "rad")
    browser.get(f"{base_url}/studies/{job.id}")
    wait_for(browser, lambda d: d.find_element(By.ID, "viewport").get_attribute("data-loaded") == "1")

    number = browser.find_element(By.ID, "wl-width-number")
    number.send_keys(Keys.CONTROL, "a")
    number.send_keys("100", Keys.TAB)
    assert browser.find_element(By.ID, "wl-width").get_attribute("value") == "100"
    browser.execute_script(
        "var s = document.getElementById('wl-level'); s.value = 90; s.dispatchEvent(new Event('input'));"
    )
    assert browser.find_element(By.ID, "wl-level-number").get_attribute("value") == "90"

    backgrounds = browser.execute_script(  # read in one go: no element can go stale between two reads
        "return Array.from(document.querySelectorAll('.overlays .legend-swatch'))"
        ".map(function (s) { return getComputedStyle(s).backgroundImage; });"
    )
    assert len(backgrounds) == len(result.positive_findings) and len(set(backgrounds)) == len(backgrounds)
    assert "Colour scale" in browser.find_element(By.ID, "heatmap-legend").text
    toggles = browser.find_elements(By.CSS_SELECTOR, ".heatmap-toggle")
    for toggle in toggles[:2]:
        toggle.click()
    wait_for(
        browser, lambda d: len((d.find_element(By.ID, "viewport").get_attribute("data-overlays") or "").split(",")) == 2
    )
    browser.find_element(By.CSS_SELECTOR, '#reading-box button[data-action="claim"]').click()
    wait_for(browser, lambda d: "Claimed by rad" in d.find_element(By.ID, "reading-box").text)
    wait_for(browser, lambda d: d.find_element(By.ID, "viewport").get_attribute("data-loaded") == "1")
    for toggle in browser.find_elements(By.CSS_SELECTOR, ".heatmap-toggle")[:2]:
        toggle.click()
    wait_for(
        browser, lambda d: len((d.find_element(By.ID, "viewport").get_attribute("data-overlays") or "").split(",")) == 2
    )
    browser.set_window_size(1440, 1250)  # tall enough for the heatmap legend under the image
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(screenshots / "study-desktop.png"))

    _phone(browser)
    browser.get(f"{base_url}/studies/{job.id}")
    wait_for(browser, lambda d: d.find_element(By.ID, "viewport").get_attribute("data-loaded") == "1")
    assert _fits(browser)
    browser.save_screenshot(str(screenshots / "study-phone.png"))


def test_the_compliance_page_filters_by_user_and_fits_a_phone(
    browser: WebDriver, base_url: str, components: Components, archive: Archive, screenshots: Path
) -> None:
    _o, job = order(components, archive.chest, accession="ACC-C9", patient="Patient/c9")
    wait_terminal(components, job.id)
    sign_in(browser, base_url, "rad")
    browser.get(f"{base_url}/studies/{job.id}")
    wait_for(browser, lambda d: d.find_element(By.ID, "viewport").get_attribute("data-loaded") == "1")
    browser.find_element(By.CSS_SELECTOR, ".userbox button").click()
    sign_in(browser, base_url, "comp")
    browser.find_element(By.ID, "user").send_keys("rad")
    browser.find_element(By.ID, "search-audit").click()
    results = wait_for(browser, EC.presence_of_element_located((By.ID, "audit-results")))
    assert "study page" in results.text and "Signed in (web pages)" in results.text and "Read" in results.text
    browser.set_window_size(1440, 1300)
    browser.save_screenshot(str(screenshots / "compliance-desktop.png"))
    _phone(browser)
    browser.refresh()
    wait_for(browser, EC.presence_of_element_located((By.ID, "audit-results")))
    assert _fits(browser)  # the results table scrolls inside its card, the page does not
    browser.execute_script("document.getElementById('results-title').scrollIntoView()")
    browser.save_screenshot(str(screenshots / "compliance-phone.png"))
