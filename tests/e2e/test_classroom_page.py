"""The classroom page against a real SignalingService (fake media node on the bus), in real Chromium."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable

import pytest
from playwright.async_api import Page, expect

from core.service import ServiceHost
from core.tokens import TokenIssuer, TokenVerifier, generate_private_key, private_key_pem, public_key_pem
from tests.e2e.conftest import OpenPage
from tests.signaling.conftest import Keys, Stack

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def keys() -> Keys:
    key = generate_private_key()
    issuer = TokenIssuer(private_key_pem(key))
    return Keys(issuer, TokenVerifier(public_key_pem(key)), TokenIssuer(private_key_pem(generate_private_key())))


@pytest.fixture
async def page_stack(keys: Keys) -> AsyncIterator[tuple[Stack, ServiceHost]]:
    stack = await Stack(None, keys).start()
    stack.node.offer_on_join = False  # the fake node's SDP is not real; this page test needs none
    stack.node.ice_servers = []  # host candidates on loopback only: gathering completes at once
    host = await stack.signaling()
    yield stack, host
    await stack.close()


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:  # polling a test double's record: there is no event to wait on
            if predicate():
                return
            await asyncio.sleep(0.05)


async def joined(page: Page) -> None:
    await page.wait_for_function("window.classmesh && window.classmesh.state === 'joined'", timeout=10_000)


async def test_page_renders_requests_media_and_says_hello(
    page_stack: tuple[Stack, ServiceHost], open_page: OpenPage
) -> None:
    stack, host = page_stack
    token = stack.keys.token(room="algebra-1", identity="alice", role="student")
    page, log = await open_page(f"{host.url}/room/algebra-1?token={token}")
    await joined(page)
    # hello reached the node as a join with the token's identity
    join = stack.node.ops("join")[0]
    assert (join["room_id"], join["identity"], join["role"]) == ("algebra-1", "alice", "student")
    # the camera and microphone were opened and offered on the publisher connection, after ICE gathering
    await page.wait_for_function("window.classmesh.pcs.publisher !== null")
    kinds = await page.evaluate(
        "window.classmesh.pcs.publisher.getSenders().map(s => s.track && s.track.readyState + ':' + s.track.kind)"
    )
    assert sorted(kinds) == ["live:audio", "live:video"]
    started = time.monotonic()
    await until(lambda: stack.node.ops("publish"))
    print(f"publish offer sent {time.monotonic() - started:.2f}s after the publisher was created")
    publish = stack.node.ops("publish")
    assert sorted(publish[0]["sources"].values()) == ["camera", "microphone"]
    assert "a=candidate:" in publish[0]["sdp"] and "a=sendonly" in publish[0]["sdp"]
    # the page shows the local tile with name and role, and publish controls for a student
    tile = page.locator("figure.tile.local")
    await expect(tile.locator(".name")).to_have_text("Alice (you)")
    await expect(tile.locator(".role")).to_have_text("student")
    await expect(page.locator("#publish-controls")).to_be_visible()
    await expect(page.locator("#status")).to_contain_text("In class as Alice")
    # chat goes out through signaling and comes back from the node with the sender attached
    await page.fill("#chat-input", "hello <b>class</b>")
    await page.press("#chat-input", "Enter")
    await expect(page.locator("#messages li").last).to_have_text(re.compile(r"You\s*hello <b>class</b>"))
    assert stack.node.ops("data")[0]["body"] == {"text": "hello <b>class</b>"}
    assert log.errors == []


async def test_second_person_appears_and_observer_gets_no_publish_controls(
    page_stack: tuple[Stack, ServiceHost], open_page: OpenPage
) -> None:
    stack, host = page_stack
    teacher, _ = await open_page(
        f"{host.url}/room/r1?token={stack.keys.token(room='r1', identity='tina', role='instructor')}"
    )
    await joined(teacher)
    observer, log = await open_page(
        f"{host.url}/room/r1?token={stack.keys.token(room='r1', identity='olga', role='observer')}"
    )
    await joined(observer)
    await expect(observer.locator("#publish-controls")).to_be_hidden()
    await expect(observer.locator("#data-controls")).to_be_visible()
    assert await observer.evaluate("window.classmesh.pcs.publisher") is None
    await until(lambda: stack.node.ops("publish"))  # the teacher's
    observer_pid = stack.node.ops("join")[1]["participant_id"]
    assert all(p["participant_id"] != observer_pid for p in stack.node.ops("publish"))
    # the teacher is listed on the observer's page, and the observer on the teacher's
    await expect(observer.locator("figure.tile:not(.local) .name")).to_have_text("Tina")
    await expect(teacher.locator("figure.tile:not(.local) .name")).to_have_text("Olga")
    await expect(teacher.locator("figure.tile:not(.local) .role")).to_have_text("observer")
    # a raised hand shows on the other page
    await observer.click("#btn-hand")
    await expect(teacher.locator("figure.tile:not(.local) .hand")).to_be_visible()
    assert log.errors == []


async def test_page_resumes_after_the_socket_drops(page_stack: tuple[Stack, ServiceHost], open_page: OpenPage) -> None:
    stack, host = page_stack
    page, log = await open_page(f"{host.url}/room/r1?token={stack.keys.token(room='r1')}")
    await joined(page)
    first_pid = await page.evaluate("window.classmesh.participantId")
    await page.evaluate("window.classmesh.dropSocket()")
    await page.wait_for_function("window.classmesh.events.some(e => e.text.includes('resuming'))", timeout=5000)
    await joined(page)
    assert await page.evaluate("window.classmesh.participantId") == first_pid
    assert len(stack.node.ops("join")) == 1 and len(stack.node.ops("state")) == 1
    assert log.errors == []


async def test_bad_token_shows_an_error_and_does_not_retry(
    page_stack: tuple[Stack, ServiceHost], open_page: OpenPage
) -> None:
    stack, host = page_stack
    page, _ = await open_page(f"{host.url}/room/r1?token=not-a-token")
    await page.wait_for_function("window.classmesh && window.classmesh.state === 'failed'", timeout=10_000)
    await expect(page.locator("#status")).to_contain_text("Cannot join")
    assert stack.node.requests == []
