"""The status page at http://keyswap.local/ in a real headless Chromium (Debian's, driven by
Playwright), through a real mitmdump, against the fake OAuth server and APIs.

Skips when Playwright or Chromium is missing, unless KEYSWAP_REQUIRE_BROWSER=1 (CI)."""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, User
from tests.e2e import Stack, stack
from tests.proxy import Mitmdump
from tests.test_manage import page_link

CHROMIUM = os.environ.get("KEYSWAP_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "_artifacts"
_CODE = re.compile(r'<code id="auth-code">([^<]+)</code>')


def _need_browser() -> None:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "Playwright is not installed (pip install -e '.[test]')"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if reason is None:
        return
    if os.environ.get("KEYSWAP_REQUIRE_BROWSER", "").strip() not in ("", "0"):
        pytest.fail(f"KEYSWAP_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


@pytest.fixture
def s(user: User, tmp_path: Path) -> Iterator[Stack]:
    _need_browser()
    with stack(user, tmp_path) as st:
        st.oauth.device_interval = 0.05
        yield st


def copilot_chat(proxy: Mitmdump) -> int:
    verify = ssl.create_default_context(cafile=proxy.ca)
    with httpx.Client(proxy=proxy.url, verify=verify, timeout=30) as c:
        return c.post(
            "https://api.githubcopilot.com/chat/completions",
            headers={"Authorization": "Bearer oauth:copilot"},
            json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
        ).status_code


def test_device_login_reset_and_logout_in_the_browser(s: Stack, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    s.login_anthropic("work")
    problems: list[str] = []
    with s.proxy() as proxy, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            proxy={"server": proxy.url},
            viewport={"width": 1240, "height": 900},
            color_scheme="light",
            locale="en-US",
            timezone_id="UTC",
        )
        try:
            page = browser.new_page()

            def console(msg: Any) -> None:
                if msg.type in ("error", "warning"):
                    problems.append(msg.text)

            page.on("console", console)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            # Without a session the page only says how to get one.
            page.goto("http://keyswap.local/")
            expect(page.locator("main")).to_contain_text("keyswap page")
            expect(page.get_by_role("heading", name="GitHub Copilot")).to_have_count(0)

            # The one-time link: a session cookie, then the page with the token gone.
            one_time = page_link(s.user)
            page.goto(one_time)
            expect(page).to_have_url("http://keyswap.local/")
            expect(page).to_have_title("keyswap")
            expect(page.get_by_role("heading", name="GitHub Copilot")).to_be_visible()
            anthropic = page.locator("section#p-anthropic")
            expect(anthropic.locator('tr[data-bucket="work"] .badge')).to_have_text("valid")

            # A device login: the code is shown big, the page polls until the bucket is valid.
            copilot = page.locator("section#p-copilot")
            expect(copilot.get_by_text("No account yet")).to_be_visible()
            copilot.get_by_role("button", name="Log in to GitHub Copilot").click()
            code = copilot.locator(".user-code")
            expect(code).to_be_visible()
            expect(copilot.get_by_role("button", name="Copy code")).to_be_visible()
            copilot.screenshot(path=str(tmp_path / "device-code.png"))
            s.oauth.github_approve(code.inner_text())
            row = copilot.locator('tr[data-bucket="default"]')
            expect(row.locator(".badge")).to_have_text("valid", timeout=15_000)
            expect(row).to_contain_text("octocat")
            expect(copilot.locator(".login-panel.state-done")).to_contain_text("Signed in")
            expect(page.locator("#announce")).to_contain_text("Signed in to GitHub Copilot")

            # Traffic, then a 429: the chart and the cooldown countdown show them.
            assert copilot_chat(proxy) == 200
            assert copilot_chat(proxy) == 200
            s.api.rate_limit("copilot", seconds=300)
            assert copilot_chat(proxy) == 429
            expect(row.locator(".counts")).to_contain_text("2 requests · 1 × 429", timeout=10_000)
            expect(row.locator(".countdown")).to_contain_text("left")
            page.get_by_role("button", name="Dismiss").click()
            shot = tmp_path / "status-page.png"
            page.screenshot(path=str(shot), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            for name in ("status-page.png", "device-code.png"):
                shutil.copy(tmp_path / name, ARTIFACTS / name)

            # Reset ends the cooldown.
            row.get_by_role("button", name="End the cooldown of GitHub Copilot default").click()
            expect(row.locator(".countdown")).to_have_text("—")
            assert copilot_chat(proxy) == 200

            # Log out (after the confirmation): the bucket goes.
            page.once("dialog", lambda dialog: dialog.accept())
            row.get_by_role("button", name="Log out GitHub Copilot default").click()
            expect(row).to_have_count(0)
            expect(copilot.get_by_text("No account yet")).to_be_visible()

            # A paste-style sign-in: open the provider's page, paste the code it shows.
            anthropic.get_by_label("Bucket (account name)").fill("second")
            anthropic.get_by_role("button", name="Log in to Claude (Pro/Max)").click()
            link = anthropic.get_by_role("link", name="Open the Claude (Pro/Max) sign-in page")
            expect(link).to_be_visible()
            authorize = link.get_attribute("href")
            assert authorize and authorize.startswith(s.oauth.base_url)
            location = httpx.get(authorize, follow_redirects=False).headers["location"]
            pasted = _CODE.search(httpx.get(location).text).group(1)  # type: ignore[union-attr]
            anthropic.screenshot(path=str(tmp_path / "paste-login.png"))
            anthropic.get_by_label("Paste the code the page shows").fill(pasted)
            anthropic.get_by_role("button", name="Submit").click()
            second = anthropic.locator('tr[data-bucket="second"] .badge')
            expect(second).to_have_text("valid", timeout=15_000)
            assert problems == [], problems

            # The link again (say someone else read it): refused, and the session it
            # opened is closed, so the page it opened says so at its next poll.
            again = browser.new_page()
            again.goto(one_time)
            expect(again.locator("main")).to_contain_text("already used")
            expect(page.locator("#problem")).to_contain_text("keyswap page")
            again.goto("http://keyswap.local/")
            expect(again.locator("main")).to_contain_text("needs a one-time link")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert s.token("anthropic", "work") not in proxy.output
    assert pasted not in proxy.output
    assert one_time.split("t=", 1)[1] not in proxy.output
    shutil.copy(tmp_path / "paste-login.png", ARTIFACTS / "paste-login.png")


def test_quota_windows_and_conversations_per_bucket(s: Stack, tmp_path: Path) -> None:
    """Each window as a bar with its reset time, and the conversations the bucket holds,
    from the state an earlier run saved (the proxy restores it at start) and live traffic."""
    from playwright.sync_api import expect, sync_playwright

    token = s.login_anthropic("work")
    now = time.time()
    windows = [
        {"name": "5h", "used": 0.42, "resets_at": now + 3 * 3600 + 12 * 60 + 30},
        {"name": "7d", "used": 0.97, "resets_at": now + 5 * 86400 + 600, "status": "allowed"},
    ]
    # What the live answers then report (their usage headers) agrees with what was saved.
    s.api.usage(
        "anthropic",
        token=token,
        five_hour=0.42,
        five_hour_reset=windows[0]["resets_at"],
        seven_day=0.97,
        seven_day_reset=windows[1]["resets_at"],
    )
    state = s.user.data_dir / "state.json"
    buckets = {"anthropic:work": {"windows": windows, "updated": now, "served": 4}}
    state.write_text(json.dumps({"version": 1, "saved": now, "buckets": buckets}))
    state.chmod(0o600)
    problems: list[str] = []
    with s.proxy() as proxy, sync_playwright() as pw:
        verify = ssl.create_default_context(cafile=proxy.ca)
        with httpx.Client(proxy=proxy.url, verify=verify, timeout=30) as c:
            for topic in ("tides", "moths"):  # two conversations, both on the only account
                resp = c.post(
                    "https://api.anthropic.com/v1/messages",
                    headers={"x-api-key": "oauth:anthropic"},
                    json={
                        "model": "claude-test",
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"about {topic}"}],
                    },
                )
                assert resp.status_code == 200, resp.text
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            proxy={"server": proxy.url},
            viewport={"width": 1240, "height": 900},
            locale="en-US",
            timezone_id="UTC",
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(page_link(s.user))
            row = page.locator('section#p-anthropic tr[data-bucket="work"]')
            five = row.locator('.window[data-window="5h"]')
            expect(five.get_by_role("meter")).to_have_attribute("aria-valuenow", "42")
            expect(five.locator(".window-used")).to_have_text("42%")
            expect(five.locator(".reset")).to_have_text("resets in 3 h 12 min")
            expect(five.locator(".fill")).to_have_attribute("style", "width: 42%;")
            seven = row.locator('.window[data-window="7d"]')
            expect(seven).to_have_class(re.compile(r"\bfull\b"))
            expect(seven.locator(".window-used")).to_have_text("97%")
            expect(seven.locator(".reset")).to_have_text("resets in 5 days")
            meter = row.get_by_role("meter", name="Claude (Pro/Max) work, 5h window: 42% used")
            expect(meter).to_be_visible()
            expect(row.locator(".holds")).to_have_text("holds 2 conversations")
            expect(row.locator(".counts")).to_contain_text("6 requests")
            # Typing survives the polls that update the bars.
            field = page.locator("section#p-copilot").get_by_label("Bucket (account name)")
            field.fill("typing")
            before = page.locator("#updated").inner_text()
            expect(page.locator("#updated")).not_to_have_text(before, timeout=10_000)
            expect(field).to_be_focused()
            expect(field).to_have_value("typing")
            page.screenshot(path=str(tmp_path / "quota.png"), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(tmp_path / "quota.png", ARTIFACTS / "quota.png")
        finally:
            browser.close()
    assert problems == [], problems
