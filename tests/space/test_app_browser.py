"""The Space in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``): pick the example,
analyse, see the report on the page, screenshot it; a bad upload shows an error and the app keeps serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="needs selenium (pip install -e '.[test]')")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (apt install chromium chromium-driver; .ci/run does)",
    ),
]
#: Seconds to wait for an analysis to show up on the page.
TIMEOUT = 240


def open_browser(width: int = 1400, height: int = 1500) -> webdriver.Chrome:
    """Headless Chromium as CI runs it (no sandbox in containers, no background network)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def analyse_example(driver: webdriver.Chrome, url: str) -> str:
    """Load the page, pick the bundled example, press Analyse; returns the report's text."""
    wait = WebDriverWait(driver, TIMEOUT)
    driver.get(url)
    example = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".gallery-item, button.example, td.gallery")))
    example.click()
    wait.until(lambda d: "phantom_" in d.find_element(By.ID, "upload").text)
    driver.find_element(By.ID, "run").click()
    wait.until(lambda d: "lesion" in d.find_element(By.ID, "status").text)
    return driver.find_element(By.ID, "report").text


@pytest.fixture()
def driver():
    browser = open_browser()
    yield browser
    browser.quit()


def test_example_report_appears_on_the_page(driver, served_space, tmp_path):
    report = analyse_example(driver, served_space)
    assert "Structured report" in report and ("FINDINGS" in report.upper() or "CONCLUSION" in report.upper())
    status = driver.find_element(By.ID, "status").text
    assert "phantom_liver_cancer.nii.gz" in status
    views = driver.find_elements(By.CSS_SELECTOR, "#view-axial img, #view-coronal img, #view-sagittal img")
    assert len(views) == 3 and all(v.size["width"] > 50 for v in views)
    assert driver.save_screenshot(str(tmp_path / "space.png"))
    assert (tmp_path / "space.png").stat().st_size > 10_000


def test_bad_upload_shows_an_error_and_the_app_keeps_serving(driver, served_space, tmp_path):
    garbage = tmp_path / "broken.nii.gz"
    garbage.write_bytes(b"\x1f\x8b\x08 not a volume")
    wait = WebDriverWait(driver, TIMEOUT)
    driver.get(served_space)
    upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")))
    upload.send_keys(str(garbage))
    wait.until(lambda d: "broken.nii" in d.find_element(By.ID, "upload").text)
    driver.find_element(By.ID, "run").click()
    toast = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".toast-body, .toast-wrap") if e.text])
    assert "broken.nii.gz" in toast[0].text and "not a readable NIfTI" in toast[0].text
    driver.save_screenshot(str(tmp_path / "error.png"))
    # the app still serves: a fresh page analyses the example
    assert "Structured report" in analyse_example(driver, served_space)


def save_space_screenshot(url: str, path: Path) -> Path:
    """Screenshot of the Space with the example analysed (used to make ``docs/space.png``)."""
    browser = open_browser(1400, 1700)
    try:
        analyse_example(browser, url)
        browser.save_screenshot(str(path))
    finally:
        browser.quit()
    return path
