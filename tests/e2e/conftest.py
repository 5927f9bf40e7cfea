"""Browser fixtures: Debian's Chromium driven by Playwright (async API), headless, with fake camera and
microphone, WebRTC allowed on loopback. Tests using them are marked ``@pytest.mark.browser``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

from tests.recorder.media import ffmpeg

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


@pytest.fixture(scope="session")
def class_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pre-encoded class media for aiortc participants (``MediaPlayer(decode=False)``: nobody encodes on the live
    path, which leaves the test's CPU to the system under test): 180 s of VP8 320x240 with a keyframe every 3
    frames (a pre-encoded source cannot answer a PLI) + Opus."""
    return ffmpeg(
        tmp_path_factory.mktemp("class") / "class.webm",
        "testsrc=size=320x240:rate=30",
        180,
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-map", "0:v", "-map", "1:a"),
        *("-c:v", "libvpx", "-b:v", "300k", "-g", "3", "-keyint_min", "3", "-deadline", "realtime"),
        *("-cpu-used", "8", "-c:a", "libopus", "-b:a", "32k", "-shortest"),
    )
