"""Browser fixtures: Debian's Chromium driven by Playwright (async API), headless, with fake camera and
microphone, WebRTC allowed on loopback. Tests using them are marked ``@pytest.mark.browser``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@dataclass
class PageLog:
    """What a page said: console lines and uncaught errors (tests assert there are none)."""

    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


OpenPage = Callable[[str], Awaitable[tuple[Page, PageLog]]]


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """Opens ``url`` in its own browser context (one per simulated person)."""
    contexts: list[BrowserContext] = []

    async def open_(url: str) -> tuple[Page, PageLog]:
        # bypass_csp: the page's CSP forbids eval, which Playwright's wait_for_function(str) needs
        context = await browser.new_context(bypass_csp=True)
        contexts.append(context)
        page = await context.new_page()
        log = PageLog()

        def on_console(msg: ConsoleMessage) -> None:
            log.console.append(f"{msg.type}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: log.errors.append(str(exc)))
        await page.goto(url)
        return page, log

    yield open_
    for context in contexts:
        await context.close()
