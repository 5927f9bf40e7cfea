"""Two aiortc participants and one Chromium page in one room, through the real stack."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from classmesh.client import ClassroomClient
from tests.e2e.conftest import OpenPage
from tests.e2e.test_classroom import joined, media_flowing

pytestmark = pytest.mark.browser


async def test_two_aiortc_clients_and_a_browser_see_and_hear_each_other(stack: Any, open_page: OpenPage) -> None:
    room = "mixed"
    clients = []
    try:
        for name in ("Ana", "Ben"):
            token = stack.issuer.mint(room=room, identity=name.lower(), name=name, role="student")
            client = ClassroomClient(stack.signaling_url, token, room=room)
            await client.connect()
            await client.publish([("camera", VideoStreamTrack()), ("microphone", AudioStreamTrack())])
            clients.append(client)
        token = stack.issuer.mint(room=room, identity="cleo", name="Cleo", role="student")
        page, log = await open_page(f"{stack.signaling_url}/room/{room}?token={token}")
        cleo = await joined(page)
        ids = {c.participant_id for c in clients}
        # the browser decodes both aiortc participants' video and receives their audio
        await media_flowing(page, {str(i) for i in ids})
        # each aiortc participant receives the browser's and the other's audio and video
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(
                c.received_from(p, kind) > 20
                for c in clients
                for p in ({cleo} | ids) - {c.participant_id}
                for kind in ("audio", "video")
            ):
                break
            await asyncio.sleep(0.2)
        for c in clients:
            for p in ({cleo} | ids) - {c.participant_id}:
                assert c.received_from(str(p), "video") > 20, (c.participant_id, p)
                assert c.received_from(str(p), "audio") > 20, (c.participant_id, p)
        assert not log.errors
    finally:
        for c in clients:
            await c.close()
