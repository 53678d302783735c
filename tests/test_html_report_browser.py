"""The HTML report in a real headless Chromium (Selenium + Debian's chromium and chromium-driver).

The page is opened from a file:// URL with every network request blocked (DevTools Network.setBlockedURLs and
offline emulation); the test checks that nothing was requested but the file itself, that the console holds
no error, that the table and every figure are present and visible with a real size, that hostile labels
rendered as text and ran nothing, that the page fits the window's width, and it takes a full-page screenshot
(kept under $RAGICL_SCREENSHOT_DIR when set; docs/img/report.png was made that way). Skips, saying why, where
no browser or no selenium is installed (.ci/run installs both where it can).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _html_fixtures import synthetic_report, trec_fixture

from ragicl.evaluation.html_report import write_html_report

HOSTILE = ("<script>window.__pwned=1</script>", '"><img src=x onerror="window.__pwned=2">', "a&amp;b")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chromium = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                    None)
    driver_bin = shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.skip("no headless browser: needs chromium and chromedriver on PATH (Debian: apt-get install "
                    "chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*",
                                                                 "ftp://*"]})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                "downloadThroughput": 0, "uploadThroughput": 0})
    yield driver
    driver.quit()


def _open(driver, path: Path) -> dict:
    """Load ``path``; return the requests made, console entries and page facts."""
    driver.get_log("browser"), driver.get_log("performance")  # drop what came before
    driver.set_window_size(1280, 900)
    driver.get(path.resolve().as_uri())
    requests = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            requests.append(msg["params"]["request"]["url"])
    return {"requests": requests, "console": driver.get_log("browser"),
            "overflow": driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"),
            "pwned": driver.execute_script("return window.__pwned === undefined ? null : window.__pwned")}


def _visible_box(driver, css: str) -> dict:
    from selenium.webdriver.common.by import By

    elements = driver.find_elements(By.CSS_SELECTOR, css)
    assert elements, f"{css} is missing"
    el = elements[0]
    assert el.is_displayed(), f"{css} is not visible"
    return el.rect


def _screenshot(driver, name: str, tmp_path: Path) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 12000))
    out = tmp_path / name
    assert driver.save_screenshot(str(out))
    keep = os.environ.get("RAGICL_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / name)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real picture, not a blank page
    return out


def _check_clean(facts: dict, path: Path) -> None:
    assert facts["requests"] in ([], [path.resolve().as_uri()]), facts["requests"]
    errors = [e for e in facts["console"] if e.get("level") in ("SEVERE", "ERROR")]
    assert errors == [], errors
    assert facts["pwned"] is None
    assert facts["overflow"] <= 0, "the page is wider than a 1280 px window"


def test_real_report_renders_in_chromium(browser, tmp_path):
    """The report of a real ``ragicl eval`` on TREC (tests/fixtures/report-trec, see its README.md)."""
    report, preds, tune, curve, command = trec_fixture(tmp_path)
    path = write_html_report(report, tmp_path / "report.html", tune=tune, curves={"gap vs shots k": curve},
                             predictions=preds, command=command)
    facts = _open(browser, path)
    _check_clean(facts, path)
    assert browser.title == f"ragicl report: {report.dataset}"
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "table.results tbody tr")
    assert [r.find_element(By.TAG_NAME, "th").text for r in rows] == [s.name for s in report.systems]
    for css in ("#fig-accuracy svg", "#fig-tv svg", "#fig-gap-closed svg", "table.confusion", "#fig-tune svg",
                "#curves svg", "#notes li"):
        box = _visible_box(browser, css)
        assert box["width"] > 100 and box["height"] > 15, (css, box)
    bars = browser.find_elements(By.CSS_SELECTOR, "#fig-accuracy g.bar rect")
    assert len(bars) == len(report.systems) and all(b.rect["width"] > 1 for b in bars)
    _screenshot(browser, "report.png", tmp_path)


def test_hostile_labels_and_many_labels_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    labels = (*HOSTILE, *[f"intent_{i:03d}_with_a_rather_long_name" for i in range(147)])
    report, test = synthetic_report(labels=labels, n=900)
    path = write_html_report(report, tmp_path / "hostile.html", gold=[ex.label for ex in test.examples],
                             title=HOSTILE[0])
    facts = _open(browser, path)
    _check_clean(facts, path)
    assert browser.title == HOSTILE[0]
    assert browser.find_elements(By.TAG_NAME, "script") == [] and browser.find_elements(By.TAG_NAME, "img") == []
    cells = [c.get_attribute("title") for c in browser.find_elements(By.CSS_SELECTOR, "table.confusion th")]
    assert len([c for c in cells if c]) <= 2 * 13  # 12 labels and "other", in rows and columns
    body = browser.find_element(By.TAG_NAME, "body").text
    assert HOSTILE[0] in body  # the title, shown as text
    box = _visible_box(browser, "table.confusion")
    assert box["width"] < 1280
    _screenshot(browser, "report-150-labels.png", tmp_path)
