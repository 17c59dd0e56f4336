"""The admin dashboard in a real browser: Debian's headless Chromium, driven by Selenium.

The proxy serves live shadow traffic (the sides of test_live_shadow), the admin
app serves the page, and the browser loads it with the admin token the way a
person would (`#token=` in the address; the page itself fetched with the
bearer header). The tests read what is rendered, click a route and a difference
group, and save a screenshot under build/test-artifacts/ (or
$CLUB_TEST_ARTIFACTS), which docs/images/dashboard.png is a copy of.

Selenium is given Debian's chromium and chromedriver paths (or
$CLUB_TEST_CHROMIUM and $CLUB_TEST_CHROMEDRIVER), so Selenium Manager never
runs and nothing is downloaded. Without them the tests are
skipped, unless CLUB_TEST_REQUIRE_BROWSER is set (.ci/run sets it after
installing both), which makes a missing browser a failure.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.proxy.shadow.test_live_shadow import candidate, legacy, serve, write_routes
from tests.proxy.shadow.test_shadow_admin import admin_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

    from tests.proxy.shadow.sides import Side

__all__ = ["admin_of", "candidate", "legacy", "serve"]  # fixtures

# Debian's packages; another install can be named by these two variables.
CHROMIUM = Path(os.environ.get("CLUB_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CLUB_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = Path(
    os.environ.get("CLUB_TEST_ARTIFACTS", Path(__file__).parents[3] / "build" / "test-artifacts")
)
TOKEN = "dash-t0ken"
WAIT = 15.0
NO_VALUE = "\u2013"  # an en dash: the page's empty cell
# Beside `items` (shadowed to a candidate that renames `id`): a route shadowed
# to a copy of the primary (it matches) and one with a canary.
EXTRA_ROUTES = (
    "  - {id: same, match: 'GET /api/same', to: legacy,"
    " shadow: {to: mirror, noise: 0, verdict: {min_requests: 3}}}\n"
    "  - {id: split, match: 'GET /api/split', to: legacy, canary: {to: mirror, weight: 0.25}}\n"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        msg = (
            f"headless Chromium is not installed ({', '.join(missing)} missing): "
            "apt-get install chromium chromium-driver"
        )
        if os.environ.get("CLUB_TEST_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--window-size=1440,1360",
    ):
        options.add_argument(argument)
    with pytest.MonkeyPatch.context() as patch:
        # Belt and braces: a driver path given skips Selenium Manager already.
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Seen:
    """What the page showed, read in the browser's thread."""

    rows: list[str]
    verdicts: dict[str, str]
    verdict_colours: dict[str, str]
    cells: dict[str, list[str]]
    token_kept: bool
    url: str
    groups: list[str]
    primary_marked: list[tuple[str, str]]
    candidate_marked: list[tuple[str, str]]
    primary_unmarked: list[str]


def _authorize(driver: WebDriver, token: str | None) -> None:
    """Send (or stop sending) the bearer header on every request, as an admin's proxy would."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})


def _wait(driver: WebDriver, css: str) -> list[WebElement]:
    found: list[WebElement] = WebDriverWait(driver, WAIT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, css)
    )
    return found


def _marked(driver: WebDriver, side: str) -> list[tuple[str, str]]:
    lines = driver.find_elements(By.CSS_SELECTOR, f"#side-{side} .line.diff")
    return [(line.text.strip(), line.get_attribute("data-path") or "") for line in lines]


def _browse(driver: WebDriver, admin: str, screenshot: Path) -> Seen:
    _authorize(driver, TOKEN)
    driver.get(f"{admin}/-/dashboard#token={TOKEN}")
    _wait(driver, "tr[data-route='items'] .verdict-not_ready")
    _wait(driver, "tr[data-route='same'] .verdict-ready")
    ids, verdicts, colours, cells = [], {}, {}, {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#routes tbody tr"):
        route_id = row.get_attribute("data-route") or ""
        verdict = row.find_element(By.CLASS_NAME, "verdict")
        ids.append(route_id)
        verdicts[route_id] = verdict.text
        if verdict.text:
            colours[route_id] = verdict.value_of_css_property("background-color")
        cells[route_id] = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    token_kept = (
        driver.execute_script(
            "return sessionStorage.getItem(arguments[0])", "club-proxy-admin-token"
        )
        == TOKEN
    )
    url = driver.current_url
    # From here on only the page's own header (from #token=) authorizes its fetches.
    _authorize(driver, None)
    driver.find_element(By.CSS_SELECTOR, "tr[data-route='items']").click()
    group = _wait(driver, "#groups tr[data-signature='missing:$.items[*].id']")[0]
    groups = [
        row.get_attribute("data-signature") or ""
        for row in driver.find_elements(By.CSS_SELECTOR, "#groups tbody tr")
    ]
    group.click()
    _wait(driver, "#side-primary .line.diff")
    unmarked = driver.find_elements(By.CSS_SELECTOR, "#side-primary .line:not(.diff)")
    seen = Seen(
        rows=ids,
        verdicts=verdicts,
        verdict_colours=colours,
        cells=cells,
        token_kept=token_kept,
        url=url,
        groups=groups,
        primary_marked=_marked(driver, "primary"),
        candidate_marked=_marked(driver, "candidate"),
        primary_unmarked=[line.text.strip() for line in unmarked],
    )
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(screenshot))
    return seen


async def test_routes_verdicts_and_a_highlighted_difference_in_the_browser(  # noqa: PLR0917 (fixtures)
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, admin_of: Any, browser: WebDriver
) -> None:
    candidate.mode = "renamed"
    shadow = "{to: cand, noise: 0, sample: 1.0, verdict: {min_requests: 4}}"
    routes = write_routes(tmp_path, legacy, candidate, shadow, extra=EXTRA_ROUTES)
    served = await serve(routes, fast_lane=True)
    admin = await admin_of(served, token=TOKEN)
    await served.get_all(["/api/items"] * 4 + ["/api/same"] * 3 + ["/api/plain"] * 2)
    await served.settled("items", 4)
    await served.settled("same", 3)
    screenshot = ARTIFACTS / "dashboard.png"
    seen = await asyncio.to_thread(_browse, browser, admin, screenshot)
    print(f"dashboard screenshot: {screenshot}")  # noqa: T201 (where the artifact is)

    assert seen.rows == ["items", "plain", "same", "split"]
    assert seen.verdicts == {"items": "not_ready", "plain": "", "same": "ready", "split": ""}
    assert seen.verdict_colours == {"items": "rgba(180, 35, 24, 1)", "same": "rgba(30, 123, 52, 1)"}
    items, split = seen.cells["items"], seen.cells["split"]
    # route, match, to, canary, shadow, requests, …, match rate
    assert items[:6] == ["items", "GET,POST /api/items", "legacy", NO_VALUE, "cand · 100%", "4"]
    assert items[10] == "0.00%"
    assert "legacy" in items[8]
    assert "primary" in items[9]
    assert "candidate" in items[9]
    assert split[3] == "mirror 25.0%"
    assert seen.cells["same"][10] == "100.00%"
    # The token left the address bar for this tab's sessionStorage.
    assert seen.token_kept
    assert seen.url.endswith("/-/dashboard")
    assert set(seen.groups) == {"missing:$.items[*].id", "extra:$.items[*].ident"}
    # The example's concrete paths are marked on each side: `id` where the
    # primary has it, `ident` where the candidate has it; nothing else.
    assert ('"id": 0,', "$.items[0].id") in seen.primary_marked
    assert len(seen.primary_marked) == 10
    assert ('"ident": 0,', "$.items[0].ident") in seen.candidate_marked
    assert len(seen.candidate_marked) == 10
    assert '"name": "item 0",' in seen.primary_unmarked
    assert screenshot.stat().st_size > 10_000


def _unauthorized(driver: WebDriver, admin: str) -> str:
    _authorize(driver, TOKEN)
    driver.get(f"{admin}/-/dashboard")  # no #token=: the page's fetches carry none
    _authorize(driver, None)
    WebDriverWait(driver, WAIT).until(
        lambda d: "unauthorized" in d.find_element(By.ID, "status").text
    )
    return str(driver.find_element(By.ID, "status").text)


async def test_without_the_token_the_page_says_how_to_give_it(  # noqa: PLR0917 (fixtures)
    tmp_path: Path, legacy: Side, candidate: Side, serve: Any, admin_of: Any, browser: WebDriver
) -> None:
    served = await serve(write_routes(tmp_path, legacy, candidate, "{to: cand}"), fast_lane=False)
    admin = await admin_of(served, token=TOKEN)
    status = await asyncio.to_thread(_unauthorized, browser, admin)
    assert status == "unauthorized: open /-/dashboard#token=<admin token>"
