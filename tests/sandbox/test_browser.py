"""The sandbox in a real browser: headless Chromium (Debian's package) driven by Playwright.

Playwright's own browser download is never used: `playwright install` needs the network; CI installs
Debian's chromium instead (.ci/run).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from handlers.messages import card_blocks, to_dicts
from sandbox import render, tokens
from sandbox.server import Sandbox
from tests.sandbox.test_render import NAMES, ORIGIN, _view

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
HOSTILE = "<img src=x onerror=window.pwned=1> <script>window.pwned=2</script>"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)",
)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(port=0) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(
    browser: Browser, url: str, problems: list[str], width: int = 1600, timezone_id: str | None = None
) -> Page:
    page = await browser.new_page(
        viewport={"width": width, "height": 1000 if width > 700 else 844}, timezone_id=timezone_id
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )

    dismissing: set[asyncio.Task[None]] = set()

    def on_dialog(dialog: Any) -> None:  # an alert() from injected markup would land here
        problems.append(f"dialog: {dialog.message}")
        task = asyncio.ensure_future(dialog.dismiss())
        dismissing.add(task)
        task.add_done_callback(dismissing.discard)

    page.on("dialog", on_dialog)
    await page.goto(url)
    return page


async def test_request_refusal_and_approval_in_a_browser(sandbox: Sandbox, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, sandbox.url + "#as=U0ADMIN", problems)
    approvals = page.locator('section[data-channel="C0APPROVALS"]')
    notifications = page.locator('section[data-channel="C0NOTIFY"]')
    card = approvals.locator(".item-message").first
    approve = card.locator('button[data-action-id="dpor_approve"]')
    await expect(page.locator(".person.active")).to_contain_text("Alex Admin")

    # Alex, an admin, asks for the change; the answer is his alone.
    composer = approvals.locator(".composer-input")
    await composer.fill(f"/dpor set prod-eu 4977985 Contoso runs support {HOSTILE}")
    await composer.press("Enter")
    await expect(approvals.locator(".item-command")).to_contain_text("Request #1 is open")
    await expect(approvals.locator(".item-command .only-you")).to_have_text("Only visible to you")
    await expect(card.locator(".blk-header")).to_have_text("DPOR change request #1")
    await expect(card.locator(".field")).to_have_count(4)
    await expect(card).to_contain_text("Contoso MSP")
    await expect(card).to_contain_text("img src=x onerror=window.pwned=1")  # the reason, as text

    # Ben holds no role: the confirm dialog, then a refusal that only he sees.
    await page.click('[data-user="U0BYSTAND"]')
    await expect(page.locator(".person.active")).to_contain_text("Ben Bystander")
    await expect(approvals.locator(".item-command")).to_have_count(0)
    await approve.click()
    dialog = page.locator(".dialog")
    await expect(dialog.locator("h2")).to_have_text("Approve this change?")
    await expect(dialog).to_contain_text("Contoso MSP")
    await dialog.locator('[data-role="confirm"]').click()
    refusal = approvals.locator(".item-ephemeral")
    await expect(refusal).to_contain_text("Only an owner of subscription Production EU")
    await expect(refusal.locator(".only-you")).to_have_text("Only visible to you")
    await expect(card).to_contain_text("0 of 1 approvals")

    # Olivia, an owner, approves and confirms: the card says applied, the notification arrives.
    await page.click('.nav-item[data-target="C0APPROVALS"]')
    await page.click('[data-user="U0OWNER1"]')
    await expect(page.locator(".person.active")).to_contain_text("Olivia Owner")
    await expect(approvals.locator(".item-ephemeral")).to_have_count(0)
    await approve.click()
    await page.locator('.dialog [data-role="confirm"]').click()
    await expect(card).to_contain_text(re.compile(r"Applied at .*approved by @Olivia Owner"), timeout=15_000)
    await expect(card.locator("button[data-action-id]")).to_have_count(0)
    await expect(card.locator(".edited")).to_have_text("(edited)")
    await page.click('.nav-item[data-target="C0NOTIFY"]')
    notification = notifications.locator(".item-message").last
    await expect(notification).to_contain_text("was applied")
    await expect(notification).to_contain_text("Contoso MSP")

    # Alex gets a direct message about his request.
    await page.click('[data-user="U0ADMIN"]')
    await page.click('.nav-item[data-target="D0ADMIN"]')
    dm = page.locator('section[data-channel="D0ADMIN"] .item-message').last
    await expect(dm).to_contain_text("was applied")

    assert await page.evaluate("window.pwned") is None
    assert await page.locator("img").count() == 0
    assert problems == []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "sandbox-applied.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")


async def test_the_page_builds_each_block_type_and_no_markup(sandbox: Sandbox, browser: Browser) -> None:
    problems: list[str] = []
    page = await open_page(browser, sandbox.url, problems)
    await expect(page.locator(".pane")).to_have_count(4)
    tree = render.blocks(to_dicts(card_blocks(_view())), "", NAMES, ORIGIN)
    hostile = [
        {"el": "script", "kids": ["window.pwned = 'script'"]},
        {"el": "img", "title": 'x" onerror="window.pwned=1', "kids": []},
        {
            "el": "div",
            "class": 'x" onmouseover="window.pwned=2',
            "kids": ['<img src=x onerror="window.pwned=3">'],
        },
        {"el": "a", "kids": ["not a link"]},
    ]
    shape = await page.evaluate(
        """([tree, hostile]) => {
            const box = document.createElement("div");
            box.id = "fixture";
            box.append(...tree.map(window.sandboxPage.build), ...hostile.map(window.sandboxPage.build));
            document.body.append(box);
            const q = (s) => box.querySelectorAll(s);
            const approve = box.querySelector("button[data-action-id=dpor_approve]");
            return {
                header: box.querySelector(".blk-header").textContent,
                fields: [...q(".fields > .field")].map((f) => f.textContent),
                bold: box.querySelector(".field b").textContent,
                code: box.querySelector(".field code.code").textContent,
                mention: box.querySelector(".mention").textContent,
                date: [box.querySelector("time.date").textContent, box.querySelector("time.date").title],
                context: box.querySelector(".blk-context").textContent,
                dividers: q("hr.blk-divider").length,
                buttons: [...q(".blk-actions button")].map((b) => [b.textContent, b.className, b.type]),
                approveEnabled: !approve.disabled,
                reason: [...q(".blk-section")][1].textContent,
                scripts: q("script").length,
                images: q("img").length,
                anchors: q("a").length,
                handlers: [...box.querySelectorAll("*")].filter(
                    (e) => [...e.attributes].some((a) => a.name.startsWith("on"))
                ).length,
                hostileText: box.textContent.includes('<img src=x onerror="window.pwned=3">'),
            };
        }""",
        [tree, hostile],
    )
    assert shape["header"] == "DPOR change request #1"
    assert shape["fields"][1] == "Requested by\n@Alex Admin"
    assert (shape["bold"], shape["code"], shape["mention"]) == (
        "Subscription",
        "11111111-1111-4111-8111-111111111111",
        "@Alex Admin",
    )
    assert shape["date"] == ["Mar 13, 2026 09:00", "2026-03-13 09:00 UTC"]
    assert shape["context"] == "Expires Mar 13, 2026 09:00"
    assert shape["dividers"] == 1
    assert shape["buttons"] == [
        ["Approve", "btn btn-primary", "button"],
        ["Reject", "btn btn-danger", "button"],
    ]
    assert shape["approveEnabled"]
    assert shape["reason"] == 'Reason\n<script>alert(1)</script> <img src=x onerror="alert(2)">'
    assert (shape["scripts"], shape["images"], shape["anchors"], shape["handlers"]) == (0, 0, 0, 0)
    assert shape["hostileText"]
    assert await page.evaluate("window.pwned") is None
    assert problems == []


async def no_sideways_scroll(page: Page) -> None:
    width = await page.evaluate("document.documentElement.clientWidth")
    assert await page.evaluate("document.documentElement.scrollWidth") <= width


async def test_the_form_app_home_dates_and_a_phone_in_a_browser(sandbox: Sandbox, browser: Browser) -> None:
    """A newcomer's whole flow without typing an ID: the shortcut, typeahead, an inline error, the card,
    another owner approving from App Home; then the same pages on a 390 px phone."""
    problems: list[str] = []
    zone = "Asia/Kolkata"  # +05:30: the browser's zone, not the server's
    page = await open_page(browser, sandbox.url + "#as=U0ADMIN", problems, width=1440, timezone_id=zone)
    approvals = page.locator('section[data-channel="C0APPROVALS"]')
    await approvals.locator(".shortcut-btn").click()
    await approvals.locator('.menu-item[data-callback-id="dpor_set"]').click()
    modal = page.locator(".slack-modal")
    await expect(modal.locator("h2")).to_have_text("Change a DPOR")

    subscription = modal.locator('[data-block-id="subscription"] input')
    await subscription.click()
    await subscription.press_sequentially("prod")
    await modal.locator('[data-block-id="subscription"] .option', has_text="Production EU").click()
    await expect(subscription).to_have_value(re.compile("Production EU"))
    partner = modal.locator('[data-block-id="partner"] input')
    await partner.click()
    await partner.press_sequentially("Contoso")
    await modal.locator('[data-block-id="partner"] .option', has_text="Contoso MSP").click()

    # No reason: the bot answers with an inline error under the field; the modal and the picks stay.
    await modal.locator('[data-role="submit"]').click()
    error = modal.locator('[data-block-id="reason"] .input-error')
    await expect(error).to_be_visible()
    await expect(subscription).to_have_value(re.compile("Production EU"))
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "sandbox-modal-1440.png"))

    await modal.locator('[data-block-id="reason"] textarea').fill("Contoso now runs our support")
    await modal.locator('[data-role="submit"]').click()
    await expect(modal).to_have_count(0)
    card = approvals.locator(".item-message").first
    await expect(card.locator(".blk-header")).to_contain_text("#1")
    await expect(card).to_contain_text("Contoso MSP")

    # Dates in the browser's zone, as each Slack client writes them.
    date = card.locator("time[data-epoch]").first
    epoch = int(await date.get_attribute("data-epoch") or 0)
    shown = await date.text_content()
    node = tokens.date(
        f"{epoch}^{{date_num}} {{time}}", "", ZoneInfo(zone), lambda: datetime.now(ZoneInfo(zone))
    )
    assert isinstance(node, dict)
    written = await page.evaluate("(e) => window.slackDates.formatDate(e, '{date_num} {time}')", epoch)
    assert written == node["kids"][0]
    assert shown

    # Olivia, another owner, approves from her Home tab: the card is applied.
    await page.click('[data-user="U0OWNER1"]')
    await page.click('.nav-item[data-target="home"]')
    home = page.locator('section[data-channel="home"]')
    approve = home.locator('button[data-action-id="dpor_approve"]').first
    await expect(approve).to_be_visible(timeout=10_000)
    await page.screenshot(path=str(ARTIFACTS / "sandbox-home-1440.png"))
    await approve.click()
    if await page.locator(".dialog").count():
        await page.locator('.dialog [data-role="confirm"]').click()
    await page.click('.nav-item[data-target="C0APPROVALS"]')
    await expect(card).to_contain_text("Applied", timeout=15_000)
    toggle = card.locator(".thread-toggle")
    await expect(toggle).to_have_text(re.compile(r"\d+ repl(y|ies)"))
    await toggle.click()
    await expect(card.locator(".replies .item").first).to_be_visible()
    await no_sideways_scroll(page)
    await page.screenshot(path=str(ARTIFACTS / "sandbox-applied-1440.png"))

    # A 1024 px laptop and a 390 px phone: nothing scrolls sideways; the sidebar is a menu on the phone.
    await page.set_viewport_size({"width": 1024, "height": 768})
    await no_sideways_scroll(page)
    await page.set_viewport_size({"width": 390, "height": 844})
    await expect(page.locator("#sidebar")).to_be_hidden()
    await no_sideways_scroll(page)
    await page.screenshot(path=str(ARTIFACTS / "sandbox-channel-390.png"))
    await page.click("#menu")
    await page.click('.nav-item[data-target="home"]')
    await expect(home).to_be_visible()
    await no_sideways_scroll(page)
    await page.screenshot(path=str(ARTIFACTS / "sandbox-home-390.png"))
    await page.click("#menu")
    await page.click('.nav-item[data-target="C0APPROVALS"]')
    await approvals.locator(".shortcut-btn").click()
    await approvals.locator('.menu-item[data-callback-id="dpor_set"]').click()
    await expect(modal).to_be_visible()
    box = await modal.bounding_box()
    assert box is not None and box["width"] == 390  # full screen on a phone
    await page.screenshot(path=str(ARTIFACTS / "sandbox-modal-390.png"))
    assert problems == []
