"""The search page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium; nothing downloads a browser) against
``dahash-index serve`` on 127.0.0.1: over UC Merced scenes and the trained model (an upload
finds its class), and over small GeoTIFFs in two UTM zones (``geo_index``: the map, filters,
paging, export, shared links, narrow screens, the keyboard and stale state).

Skips, with the reason, when Chromium, its driver or Selenium is missing (``.ci/run`` installs
them) or when the real data is absent. ``DAHASH_INDEX_SCREENSHOTS=DIR`` also copies the
screenshots there (how docs/serve-page.png and docs/serve-page-narrow.png are made).
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from conftest import running_service
from helpers import link_ucmerced

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install "
                                                  "'.[test]')")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="no chromium/chromedriver on PATH (apt-get install chromium "
                              "chromium-driver)"),
]

QUERY_CLASS = "harbor"


def chromium(width: int = 1400, height: int = 1000, downloads=None):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    if width < 500:  # below headless Chromium's smallest window: a phone's screen, emulated
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": True})
    return driver


def keep_screenshot(driver, path) -> None:
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("DAHASH_INDEX_SCREENSHOTS"):
        shutil.copy(path, os.path.join(os.environ["DAHASH_INDEX_SCREENSHOTS"], path.name))


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


@pytest.mark.realdata
def test_upload_shows_thumbnails_and_the_right_class_first(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    try:
        driver.get(server["url"] + "/")
        WebDriverWait(driver, 30).until(
            lambda d: "scenes" in d.find_element(By.ID, "info").text)
        query = sorted((server["shards"] / QUERY_CLASS).iterdir())[0].resolve()
        choose(driver, query)

        def rendered(d) -> int:
            return d.execute_script(
                "return [...document.querySelectorAll('.hit img')]"
                ".filter(i => i.complete && i.naturalWidth > 0).length;")

        WebDriverWait(driver, 180).until(lambda d: rendered(d) >= 20)
        cards = driver.find_elements(By.CSS_SELECTOR, ".hit")
        assert len(cards) == 50
        assert cards[0].find_element(By.CSS_SELECTOR, ".label").text == QUERY_CLASS
        assert "error" not in driver.find_element(By.ID, "status").get_attribute("class")
        cards[0].click()  # its metadata and "more like this"
        WebDriverWait(driver, 10).until(
            lambda d: QUERY_CLASS in d.find_element(By.ID, "detail").text)
        keep_screenshot(driver, tmp_path / "serve-page.png")
        assert not severe(driver)
    finally:
        driver.quit()


# --- the map, filters, paging, export, links, narrow screens, keyboard, stale state ----------


@pytest.fixture(scope="module")
def geo(geo_index, cli_env):
    with running_service(geo_index["index"], cli_env) as url:
        yield {"url": url, **geo_index}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    driver = chromium(downloads=downloads)
    driver.downloads = downloads
    yield driver
    driver.quit()


def severe(driver) -> list:
    """The console's errors since the last call."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def cards(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, ".hit")


def shown(driver) -> list[dict]:
    """The hits on screen, as the page holds them."""
    return driver.execute_script("return hits;")


def load(driver, url: str, n: int) -> None:
    driver.get(url)
    from selenium.common.exceptions import TimeoutException

    try:
        wait(driver, lambda d: len(cards(d)) == n and "hits for" in d.find_element(
            "id", "status").text)
    except TimeoutException:
        raise AssertionError(f"{url}: {len(cards(driver))} hits, not {n}; status "
                             f"{driver.find_element('id', 'status').text!r}; console "
                             f"{driver.get_log('browser')}") from None


def choose(driver, path) -> None:
    """Choose ``path`` in the page's file input (hidden behind its button: shown for Selenium
    to type into, then hidden again, as a user's file dialog leaves it)."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, "file")
    driver.execute_script("arguments[0].hidden = false;", element)
    element.send_keys(str(path))
    driver.execute_script("arguments[0].hidden = true;", element)


def queries_sent(driver) -> int:
    return driver.execute_script("return performance.getEntriesByType('resource')"
                                 ".filter(e => e.name.includes('/query?')).length;")


def test_the_map_and_the_cards_point_at_each_other(geo, browser, tmp_path):
    from selenium.webdriver.common.by import By

    load(browser, f"{geo['url']}/?row=0&top=12", 12)
    paths = browser.find_elements(By.CSS_SELECTOR, "path.footprint")
    assert len(paths) == 12  # every hit's footprint
    assert len(browser.find_elements(By.CSS_SELECTOR, "path.query-footprint")) == 1
    assert browser.find_elements(By.CSS_SELECTOR, ".leaflet-control-scale")
    # A card chosen: its footprint turns orange; a footprint clicked: its card is chosen.
    cards(browser)[3].click()
    stroke = browser.execute_script("return footprints[3].options.color;")
    assert stroke == "#d05522" and "Hamming distance" in browser.find_element(By.ID,
                                                                               "detail").text
    browser.execute_script("footprints[5].fire('click');")
    assert "selected" in cards(browser)[5].get_attribute("class")
    assert browser.execute_script("return document.activeElement.dataset.index;") == "5"
    # Bounds as rows, the ground sample distance, the date: readable metadata.
    detail = browser.find_element(By.ID, "detail").text
    for word in ("west", "north", "ground sample distance", "date", "CRS"):
        assert word in detail
    keep_screenshot(browser, tmp_path / "serve-page-map.png")
    # Nothing but this service was asked for anything (no tiles without --basemap).
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin);")
    assert set(origins) <= {geo["url"]}
    assert not severe(browser)


def test_filters_and_paging_are_answered_by_the_service(geo, browser):
    from selenium.webdriver.common.by import By

    load(browser, f"{geo['url']}/?row=0&top=12&limit=5", 5)
    assert browser.find_element(By.ID, "pageinfo").text == "1–5 of 12"
    browser.find_element(By.ID, "next").click()
    wait(browser, lambda d: d.find_element(By.ID, "pageinfo").text == "6–10 of 12")
    assert "offset=5" in browser.current_url
    browser.find_element(By.ID, "next").click()
    wait(browser, lambda d: d.find_element(By.ID, "pageinfo").text == "11–12 of 12")
    assert browser.find_element(By.ID, "next").get_attribute("disabled")

    load(browser, f"{geo['url']}/?row=0&top=12", 12)
    browser.find_element(By.ID, "f-label").send_keys("hills")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait(browser, lambda d: len(cards(d)) == 6)
    assert {h["label"] for h in shown(browser)} == {"hills"} and "label=hills" in \
        browser.current_url
    browser.find_element(By.ID, "clear").click()
    wait(browser, lambda d: len(cards(d)) == 12)
    browser.execute_script("document.getElementById('f-from').value = '2022-03-11';"
                           "document.getElementById('f-to').value = '2022-03-12';")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait(browser, lambda d: len(cards(d)) == 2)
    assert sorted(h["datetime"][:10] for h in shown(browser)) == ["2022-03-11", "2022-03-12"]
    browser.find_element(By.ID, "clear").click()
    wait(browser, lambda d: len(cards(d)) == 12)


def test_a_box_drawn_on_the_map_filters_by_area(geo, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    load(browser, f"{geo['url']}/?row=0&top=12", 12)
    browser.find_element(By.ID, "draw").click()
    box = browser.find_element(By.ID, "map")
    # the left half of the map: the western zone's scenes, not the eastern ones
    ActionChains(browser).move_to_element_with_offset(box, -box.size["width"] // 2 + 2,
                                                      -box.size["height"] // 2 + 2) \
        .click_and_hold().move_by_offset(box.size["width"] // 2 - 4, box.size["height"] - 4) \
        .release().perform()
    wait(browser, lambda d: "bbox=" in d.current_url and len(cards(d)) < 12)
    west, south, east, north = map(float, browser.find_element(By.ID, "f-bbox")
                                   .get_attribute("value").split(","))
    assert shown(browser) and all(h["wgs84"]["west"] <= east and h["wgs84"]["east"] >= west
                                  for h in shown(browser))
    browser.find_element(By.ID, "clear").click()
    wait(browser, lambda d: len(cards(d)) == 12)


def test_export_downloads_the_hits(geo, browser):
    from selenium.webdriver.common.by import By

    load(browser, f"{geo['url']}/?row=0&top=12&label=coast", 6)
    for name in ("hits.csv", "hits.geojson"):
        (browser.downloads / name).unlink(missing_ok=True)
    browser.find_element(By.ID, "csv").click()
    wait(browser, lambda d: (d.downloads / "hits.csv").is_file())
    lines = (browser.downloads / "hits.csv").read_text().splitlines()
    assert lines[0].startswith("query,query_name,rank,distance") and len(lines) == 7
    browser.find_element(By.ID, "geojson").click()
    wait(browser, lambda d: (d.downloads / "hits.geojson").is_file())
    time.sleep(0.5)  # the file appears before its last write
    collection = json.loads((browser.downloads / "hits.geojson").read_text())
    assert len(collection["features"]) == 6


def test_an_upload_has_a_link_that_gives_the_same_hits(geo, browser):
    from selenium.webdriver.common.by import By

    browser.get(geo["url"] + "/?top=12")
    wait(browser, lambda d: "scenes" in d.find_element(By.ID, "info").text)
    tiff = geo["shards"] / "hills" / "hills2.tif"
    choose(browser, tiff)
    wait(browser, lambda d: len(cards(d)) == 12 and "image=" in d.current_url)
    # a TIFF query gets its preview (rendered by the service) and its footprint on the map
    wait(browser, lambda d: d.execute_script(
        "const i = document.querySelector('#query img'); return i && i.src.startsWith("
        "'data:image/jpeg') && i.naturalWidth > 0;"))
    assert browser.find_elements(By.CSS_SELECTOR, "path.query-footprint")
    first = [h["row_id"] for h in shown(browser)]
    link = browser.current_url
    browser.find_element(By.ID, "cli").click()
    assert "dahash-index query 'hills2.tif' --server" in browser.find_element(
        By.ID, "copied").get_attribute("value")
    browser.find_element(By.ID, "curl").click()
    curl = browser.find_element(By.ID, "copied").get_attribute("value")
    assert curl.startswith("curl -X POST") and '"image_ids"' in curl
    load(browser, link, 12)  # the link, opened anew
    assert [h["row_id"] for h in shown(browser)] == first


def test_a_narrow_screen_needs_no_sideways_scrolling(geo, tmp_path):
    driver = chromium(360, 780)
    try:
        load(driver, f"{geo['url']}/?row=0&top=12", 12)
        assert driver.execute_script("return window.innerWidth;") == 360
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth;")
        assert not driver.find_element("id", "filter-box").get_attribute("open")  # folded
        cards(driver)[0].click()
        keep_screenshot(driver, tmp_path / "serve-page-narrow.png")
        assert not severe(driver)
    finally:
        driver.quit()


def test_the_keyboard_alone_reaches_and_chooses_hits(geo, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    load(browser, f"{geo['url']}/?row=0&top=12", 12)
    browser.execute_script("document.activeElement.blur();")
    for _ in range(60):  # Tab through the query panel, filters and toolbar to the first card
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if "hit" in browser.switch_to.active_element.get_attribute("class"):
            break
    active = browser.switch_to.active_element
    assert active.get_attribute("data-index") == "0", active.get_attribute("outerHTML")[:300]
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait(browser, lambda d: d.execute_script("return selected;") == 0)
    assert "Hamming distance" in browser.find_element(By.ID, "detail").text
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()
    assert browser.switch_to.active_element.get_attribute("data-index") == "1"
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    wait(browser, lambda d: d.execute_script("return selected;") == 1)


def test_nothing_of_an_earlier_search_stays_on_screen(geo, browser, tmp_path):
    from selenium.webdriver.common.by import By

    load(browser, f"{geo['url']}/?row=0&top=12", 12)
    cards(browser)[2].click()
    assert "Hamming distance" in browser.find_element(By.ID, "detail").text
    # "Hits" changed: the search runs again, and the chosen hit's panel goes.
    top = browser.find_element(By.ID, "top")
    top.clear()
    top.send_keys("7")
    browser.find_element(By.ID, "f-label").click()  # leaving the field is a change
    wait(browser, lambda d: len(cards(d)) == 7)
    assert "Hamming distance" not in browser.find_element(By.ID, "detail").text
    # The same file chosen twice: two searches.
    tiff = geo["shards"] / "coast" / "coast1.tif"
    before = queries_sent(browser)
    choose(browser, tiff)
    wait(browser, lambda d: queries_sent(d) == before + 1 and len(cards(d)) == 7)
    choose(browser, tiff)
    wait(browser, lambda d: queries_sent(d) == before + 2)
    # A bad upload: its error, and no hits of the search before.
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is no image")
    choose(browser, bad)
    wait(browser, lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "bad.jpg" in browser.find_element(By.ID, "status").text
    assert cards(browser) == [] and not browser.find_elements(By.CSS_SELECTOR, "path.footprint")
    assert "Choose a hit" in browser.find_element(By.ID, "detail").text
    severe(browser)  # the refused upload's 422 is logged by the browser, as it should be
