"""The service's page in a real browser: headless Debian Chromium driven by Selenium through chromedriver.

The page is loaded for a new user, who rates three movies with the stars: each
time the movie at the top of their recommendations, found through the search
box. After each click the page posts the rating, re-renders the list and sets
``document.body.dataset.ratings``; the list must then have changed and no longer
hold the movie just rated. A screenshot of the end is saved under pytest's
temporary folder, and to ``results/service/screenshot.png`` as well when
``JAXMETA_SAVE_SCREENSHOT`` is set (to anything but empty or 0).

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian's packages chromium
and chromium-driver, which .ci/run installs); skips without them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from jaxmeta.bench import load

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = ROOT / "results" / "service" / "screenshot.png"
WAIT_S = 60  # an adaptation takes milliseconds; a loaded CI machine may stall far longer


def browser(profile: Path):
    """Headless Chromium with nothing that reaches the network and no driver download (both paths given)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def recommended(driver) -> list[str]:
    return [row.get_attribute("data-item") for row in driver.find_elements("css selector", "#recommendations li.rec")]


@pytest.fixture
def driver(tmp_path):
    """The browser, or a skip saying what is missing (before the costly run fixture is built)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run does)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    driver = browser(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_rating_three_movies_with_the_stars_changes_the_recommendations_each_time(driver, served_run, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with load.serve(served_run, db=tmp_path / "ratings.sqlite") as server:
        wait = WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(f"{server.url}/?user=browser-test")
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")
        before = recommended(driver)
        assert before, "the page shows no recommendations for a new user"
        rated = []
        for count, stars in enumerate((5, 1, 4), start=1):
            top = driver.find_element(By.CSS_SELECTOR, "#recommendations li.rec")
            item, title = top.get_attribute("data-item"), top.find_element(By.CSS_SELECTOR, ".title").text
            box = driver.find_element(By.ID, "search")
            box.clear()
            box.send_keys(title)
            # the list answers this search (not the page's first one), and holds the movie
            wait.until(lambda d, title=title: (found := d.find_elements(By.CSS_SELECTOR, "#results li .title"))
                       and all(title.casefold() in row.text.casefold() for row in found))
            star = f'#results button.star[data-item="{item}"][data-rating="{stars}"]'
            driver.find_element(By.CSS_SELECTOR, star).click()
            wait.until(lambda d, n=str(count): d.execute_script("return document.body.dataset.ratings") == n)
            after = recommended(driver)
            rated.append(title)
            assert driver.find_element(By.ID, "status").text == ""
            assert after and after != before, f"rating {title!r} {stars} left the recommendations as they were"
            assert item not in after, f"{title!r}, just rated, is still recommended"
            lit = driver.find_elements(By.CSS_SELECTOR, f'#results button.star.on[data-item="{item}"]')
            assert len(lit) == stars
            before = after
        assert driver.find_element(By.ID, "count").text == "3 ratings"
        reasons = " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, "#recommendations .because"))
        assert any(title in reasons for title in rated), f"no recommendation names a rated movie: {reasons!r}"
        shot = tmp_path / "service.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    if os.environ.get("JAXMETA_SAVE_SCREENSHOT", "") not in ("", "0"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    print(f"screenshot: {shot}")
