"""The search page in headless Chromium (selenium): type a query, see thumbnails, drop a file."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,900",
]


def new_browser(profile: str) -> Any:
    """Headless Chromium with a temporary profile (selenium, Debian chromium + chromedriver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    pytest.importorskip("selenium", reason="selenium not installed (dev extra)")
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.skip("Debian chromium and chromium-driver are not installed")
    with tempfile.TemporaryDirectory() as profile:
        driver = new_browser(profile)
        try:
            yield driver
        finally:
            driver.quit()


def texts(driver: Any, selector: str) -> list[str]:
    """Texts of the matching elements, read in one script (the results are replaced as a whole)."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", selector
        )
    )


def loaded_thumbnails(driver: Any) -> int:
    return int(
        driver.execute_script(
            "return [...document.querySelectorAll('#results .card img')].filter(i => i.complete && i.naturalWidth > 0).length"
        )
    )


def test_type_a_query_and_see_thumbnails(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "items" in texts(d, "#status")[0])
    options = texts(browser, "#modality option")
    assert options == ["all modalities", "image", "text"]
    browser.find_element(By.ID, "query").send_keys("a small dog\n")
    wait.until(lambda d: len(texts(d, "#results .card")) == 10)
    wait.until(lambda d: loaded_thumbnails(d) >= 1)
    captions = texts(browser, "#results .caption")
    assert captions[0] == "a small dog"  # the caption itself ranks first, shown as text
    scores = [float(x) for x in texts(browser, "#results .score")]
    assert scores == sorted(scores, reverse=True)
    # the modality filter: only images, each with a thumbnail
    browser.find_element(By.CSS_SELECTOR, "#modality option[value=image]").click()
    browser.find_element(By.ID, "query").send_keys("\n")
    wait.until(lambda d: set(texts(d, "#results .badge")) == {"image"})
    wait.until(lambda d: loaded_thumbnails(d) == 8)


DROP = """
const [url, done] = arguments;
fetch(url).then(r => r.blob()).then(blob => {
  const data = new DataTransfer();
  data.items.add(new File([blob], "query.png", {type: "image/png"}));
  document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
  done(true);
});
"""


def test_drop_a_file(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "items" in texts(d, "#status")[0])
    browser.set_script_timeout(30)
    assert browser.execute_async_script(DROP, "/items/img5/media")
    wait.until(
        lambda d: (
            "query.png" in texts(d, "#message")[0] and "searching" not in texts(d, "#message")[0]
        )
    )
    first = browser.execute_script("return document.querySelector('#results .card').dataset.id")
    assert first == "img5"  # the dropped image finds itself first
    wait.until(lambda d: loaded_thumbnails(d) >= 1)
    # a file the server refuses shows its one-line error on the page
    browser.find_element(By.ID, "file").send_keys(str(server.folder / "index" / "CURRENT"))
    wait.until(lambda d: "not accepted" in texts(d, "#message")[0])
