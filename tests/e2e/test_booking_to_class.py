"""A booking system's whole path: REST API -> provisioning in the right region -> join links -> a live class
in Chromium -> attendance and engagement captured from the node's events -> signed webhooks, in order per
booking, retried after the receiver fails."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import standardwebhooks
from aiohttp import web

from orchestrator.api.keys import create_api_key
from tests.conftest import free_port
from tests.e2e.conftest import OpenPage
from tests.e2e.test_classroom import joined, media_flowing

pytestmark = pytest.mark.browser


class Receiver:
    """A booking system's webhook endpoint that fails its first two requests."""

    def __init__(self) -> None:
        self.secret = ""
        self.events: list[dict[str, Any]] = []
        self.attempts = 0
        self.rejected = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.text()
        payload = standardwebhooks.Webhook(self.secret).verify(body, dict(request.headers))  # raises if forged
        if self.rejected < 2:
            self.rejected += 1
            return web.Response(status=503)
        self.events.append({"id": request.headers["webhook-id"], **payload})
        return web.Response(status=204)


async def test_booking_becomes_a_live_class_with_webhooks(stack: Any, open_page: OpenPage) -> None:
    _, key = await create_api_key(stack.orchestrator.store, "booking system", ["admin"])
    api = f"{stack.orchestrator_url}/v1"
    headers = {"Authorization": f"Bearer {key}"}
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(headers=headers) as http:

            async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
                async with http.post(f"{api}{path}", json=body) as resp:
                    data = await resp.json()
                    assert resp.status in (200, 201), (path, resp.status, data)
                    return data  # type: ignore[no-any-return]

            hook = await post("/webhooks", {"url": f"http://127.0.0.1:{port}/hooks"})
            receiver.secret = hook["secret"]
            await post("/subjects", {"subject_id": "math", "name": "Mathematics"})
            await post(
                "/instructors",
                {
                    "instructor_id": "ins_ada",
                    "name": "Ada",
                    "email": "ada@example.org",
                    "time_zone": "Europe/Berlin",
                    "qualifications": [{"subject_id": "math", "max_level": 5}],
                    "weekly_availability": [{"weekday": d, "start": "00:00", "end": "24:00"} for d in range(7)],
                    "buffer_minutes": 0,
                    "max_sessions_per_day": 10,
                    "max_sessions_per_week": 50,
                },
            )
            for sid, name, country in (("stu_1", "Jonas", "DE"), ("stu_2", "Marie", "FR")):
                await post(
                    "/students",
                    {
                        "student_id": sid,
                        "name": name,
                        "time_zone": "Europe/Berlin",
                        "country": country,
                        "levels": [{"subject_id": "math", "level": 2}],
                    },
                )
            now = datetime.now(UTC)
            start = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
            start += timedelta(minutes=(5 - start.minute % 5) % 5)  # the store books in 5-minute slots
            booking = await post(
                "/bookings",
                {
                    "subject_id": "math",
                    "student_ids": ["stu_1", "stu_2"],
                    "instructor_id": "ins_ada",
                    "start": start.isoformat().replace("+00:00", "Z"),
                    "duration_minutes": 30,
                    "recording": False,
                },
            )
            session_id = booking["sessions"][0]["session_id"]

            # provisioned ahead of its start, in the region nearest to Berlin and Paris
            deadline = time.monotonic() + 15
            session: dict[str, Any] = {}
            while time.monotonic() < deadline:
                async with http.get(f"{api}/sessions/{session_id}") as resp:
                    session = await resp.json()
                if session["status"] == "provisioned":
                    break
                await asyncio.sleep(0.2)
            assert session["status"] == "provisioned", session
            assert session["region"] == "eu-central" and session["node_id"] == "eu-central-1"

            links = [
                await post(f"/sessions/{session_id}/join-links", {"participant_id": pid, "role": role})
                for pid, role in (("ins_ada", "instructor"), ("stu_1", "student"), ("stu_2", "student"))
            ]
        pages = []
        for link in links:
            page, _ = await open_page(link["url"])
            pages.append(page)
        ids = [await joined(p) for p in pages]
        for page, me in zip(pages, ids, strict=True):
            await media_flowing(page, set(ids) - {me})

        # the class went live and attendance is recorded from the node's presence events
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with aiohttp.ClientSession(headers=headers) as http, http.get(f"{api}/sessions/{session_id}") as r:
                session = await r.json()
            if session["status"] == "live" and len(session["attendance"]) >= 3:
                break
            await asyncio.sleep(0.2)
        assert session["status"] == "live"
        assert {a["participant_id"] for a in session["attendance"]} == {"ins_ada", "stu_1", "stu_2"}

        # engagement: a student chats, raises a hand and reacts in the page; the API shows it, and nothing else
        student = pages[1]
        await student.fill("#chat-input", "is it x = 2?")
        await student.press("#chat-input", "Enter")
        await student.click("#btn-hand")
        await student.click("button.reaction[data-emoji='👍']")
        # a comprehension check: the instructor asks, each student answers, only the instructor sees the tally
        teacher, other = pages[0], pages[2]
        assert await student.is_hidden("#btn-ask")
        await teacher.click("#btn-ask")
        await teacher.fill("#ask-question", "What is 2 + 2?")
        await teacher.fill("#ask-options", "3\n4\n5")
        await teacher.fill("#ask-correct", "2")
        await teacher.click("#ask-form button[type=submit]")
        for page, choice in ((student, 1), (other, 0)):
            await page.click(f"#messages li.question button[data-choice='{choice}']")
            await page.wait_for_function(
                "document.querySelector('#messages li.question .tally').textContent === 'Answer sent'"
            )
        await teacher.wait_for_function(
            "document.querySelector('#messages li.question .tally').textContent.startsWith('2 answer(s)')"
        )
        tally = await teacher.inner_text("#messages li.question .tally")
        assert tally == "2 answer(s) · 3: 1 · 4: 1 (right) · 5: 0", tally
        assert await teacher.is_disabled("#messages li.question button[data-choice='0']")  # the asker does not vote
        mine: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            url = f"{api}/sessions/{session_id}/engagement"
            async with aiohttp.ClientSession(headers=headers) as http, http.get(url) as r:
                engagement = await r.json()
            by_id = {p["participant_id"]: p for p in engagement["participants"]}
            mine = by_id["stu_1"]
            done = mine["chat_messages"] and mine["hands_raised"] and mine["reactions"] and mine["answers"]
            if done and by_id["stu_2"]["answers"] and by_id["ins_ada"]["questions_asked"]:
                break
            await asyncio.sleep(0.2)
        assert (mine["chat_messages"], mine["hands_raised"], mine["reactions"]) == (1, 1, 1), engagement
        assert (mine["answers"], mine["checks_answered"], mine["checks_correct"]) == (1, 1, 1), engagement
        assert mine["first_joined_at"] and mine["expected"]  # attended_s counts from the scheduled start, a minute away
        ada, stu_2 = (p for p in engagement["participants"] if p["participant_id"] != "stu_1")
        assert (ada["participant_id"], ada["questions_asked"], stu_2["participant_id"]) == ("ins_ada", 1, "stu_2")
        assert (stu_2["checks_answered"], stu_2["checks_correct"]) == (1, 0), engagement
        assert all(p["chat_messages"] == p["hands_raised"] == p["reactions"] == 0 for p in (ada, stu_2)), engagement

        # webhooks: signed (verified above), retried after two failures, in order for this booking
        expected = ["booking.created", "session.provisioned", "session.started"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            types = [e["type"] for e in receiver.events]
            if all(t in types for t in expected) and types.count("participant.joined") >= 3:
                break
            await asyncio.sleep(0.2)
        types = [e["type"] for e in receiver.events]
        assert receiver.rejected == 2 and receiver.attempts >= len(receiver.events) + 2
        assert types[:2] == ["booking.created", "session.provisioned"], types
        assert types.index("session.started") > types.index("session.provisioned")
        assert types.count("participant.joined") == 3
        assert len({e["id"] for e in receiver.events}) == len(receiver.events)  # stable, unique ids
    finally:
        await runner.cleanup()
