"""The search page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium; nothing downloads a browser) against
``dahash-index serve`` on 127.0.0.1, over an index of UC Merced scenes and the trained model.

Skips, with the reason, when Chromium, its driver or Selenium is missing (``.ci/run`` installs
them) or when the real data is absent. ``DAHASH_INDEX_SCREENSHOT=PATH`` also copies the
screenshot there (how docs/serve-page.png is made).
"""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import running_service
from helpers import link_ucmerced

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install "
                                                  "'.[test]')")
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="no chromium/chromedriver on PATH (apt-get install chromium "
                              "chromium-driver)"),
]

QUERY_CLASS = "harbor"


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained_model, run_cli, cli_env):
    """``dahash-index serve`` over 8 scenes of each of the 21 classes."""
    root = tmp_path_factory.mktemp("page")
    shards = link_ucmerced(root / "shards", 8)
    index = root / "index"
    run_cli("build", "--shards", shards, "--index", index, "--model", trained_model,
            "--label-from", "folder", timeout=1800, check=True)
    with running_service(index, cli_env) as url:
        yield {"url": url, "shards": shards}


def test_upload_shows_thumbnails_and_the_right_class_first(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        driver.get(server["url"] + "/")
        WebDriverWait(driver, 30).until(
            lambda d: "scenes" in d.find_element(By.ID, "info").text)
        query = sorted((server["shards"] / QUERY_CLASS).iterdir())[0].resolve()
        chooser = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false;", chooser)
        chooser.send_keys(str(query))

        def rendered(d) -> int:
            return d.execute_script(
                "return [...document.querySelectorAll('.hit img')]"
                ".filter(i => i.complete && i.naturalWidth > 0).length;")

        WebDriverWait(driver, 180).until(lambda d: rendered(d) >= 20)
        cards = driver.find_elements(By.CSS_SELECTOR, ".hit")
        assert len(cards) == 50
        assert cards[0].find_element(By.CSS_SELECTOR, ".label").text == QUERY_CLASS
        assert "error" not in driver.find_element(By.ID, "status").get_attribute("class")
        cards[0].click()  # its metadata and footprint panel, and "more like this"
        WebDriverWait(driver, 10).until(
            lambda d: QUERY_CLASS in d.find_element(By.ID, "detail").text)
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("DAHASH_INDEX_SCREENSHOT"):
            shutil.copy(shot, os.environ["DAHASH_INDEX_SCREENSHOT"])
    finally:
        driver.quit()
