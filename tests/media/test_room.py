"""Rooms with real aiortc clients on loopback: fan-out, keyframes, NACK, talk time, renegotiation,
limits, permissions and bandwidth pauses."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiortc.contrib.media import MediaPlayer
from prometheus_client import REGISTRY

from media import events as ev
from media.errors import (
    DuplicateParticipantError,
    InvalidSdpError,
    MediaError,
    NegotiationError,
    PermissionDeniedError,
    RoomFullError,
    TrackLimitError,
    UnknownParticipantError,
)
from media.forwarding import send_raw_rtcp
from media.room import NodeLimits, Room, RoomSettings
from media.rtp import build_nack, build_remb, is_vp8_keyframe
from media.track import KEYFRAME_WINDOW

from .peers import Client, Harness, ToneTrack, info, wait_for

FAST_REMB = RoomSettings(remb_pause_after=0.5, remb_resume_after=0.3)


@pytest.fixture
async def make_harness() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(settings: RoomSettings | None = None, limits: NodeLimits | None = None) -> Harness:
        h = Harness(
            lambda on_event: Room(
                "room-1", settings or RoomSettings(), node_id="test", on_event=on_event, limits=limits
            )
        )
        made.append(h)
        return h

    yield make
    for h in made:
        await h.close()


async def publish_av(client: Client, vp8_file: Path) -> tuple[ToneTrack, MediaPlayer]:
    tone = ToneTrack()
    player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    assert player.video is not None
    await client.publish([("microphone", tone), ("camera", player.video)])
    return tone, player


def video_packets(client: Client, publisher: str) -> int:
    return sum(r.packets for r in client.by_publisher(publisher, "video"))


def audio_packets(client: Client, publisher: str) -> int:
    return sum(r.packets for r in client.by_publisher(publisher, "audio"))


async def test_three_clients_receive_each_others_tracks(make_harness: Callable[..., Harness], vp8_file: Path) -> None:
    h = make_harness()
    names = ["alice", "bob", "carol"]
    clients = [await h.join(info(n)) for n in names]
    players = [await publish_av(c, vp8_file) for c in clients]

    def everyone_receives() -> bool:
        return all(
            video_packets(c, other) > 30 and audio_packets(c, other) > 15
            for c in clients
            for other in names
            if other != c.participant_id
        )

    try:
        await wait_for(everyone_receives, within=25)
    except AssertionError:
        detail = {
            c.participant_id: {(r.publisher, r.kind, r.mid): r.packets for r in c.received.values()} for c in clients
        }
        slots = {
            c.participant_id: [
                (s.tap.mid, s.kind, s.track and s.track.participant_id, s.ready, s.packets_sent)
                for s in h.room.participant(c.participant_id).subscriber.slots  # type: ignore[union-attr]
            ]
            for c in clients
        }
        raise AssertionError(f"received={detail} slots={slots} offers={[c.offers for c in clients]}") from None
    for c in clients:
        assert video_packets(c, c.participant_id) == 0
        labels = {r.label.split(":")[0] for r in c.received.values() if r.packets}
        assert labels == {"camera", "microphone"}
    published = h.of_type(ev.TrackPublished)
    assert {(e.participant_id, e.source) for e in published} == {
        (n, s) for n in names for s in ("camera", "microphone")
    }
    assert h.room.stats() == {
        "participants": 3,
        "hidden_participants": 0,
        "published_tracks": 6,
        "forwarded_tracks": 12,
    }
    for _, player in players:
        player.video.stop()


async def test_keyframe_requested_on_subscribe_and_throttled(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await alice.publish([("camera", player.video)])
    await asyncio.sleep(0.5)
    before = len(alice.keyframe_requests)
    bob = await h.join(info("bob"))
    await wait_for(lambda: len(alice.keyframe_requests) > before, within=5)
    # Three more subscribers at once and a PLI storm from bob: at most one PLI per KEYFRAME_WINDOW reaches alice.
    for n in ("carol", "dave", "erin"):
        await h.join(info(n))
    h.room.participant("bob").request_keyframe()
    h.room.participant("carol").request_keyframe()
    await asyncio.sleep(5 * KEYFRAME_WINDOW)
    times = alice.keyframe_requests[before:]
    assert 2 <= len(times) <= 6
    assert all(b - a >= 0.9 * KEYFRAME_WINDOW for a, b in itertools.pairwise(times))
    track = h.room.participant("alice").published_tracks()[0]
    assert track.plis_sent == len(alice.keyframe_requests)
    await wait_for(lambda: video_packets(bob, "alice") > 10, within=5)
    (rec,) = bob.by_publisher("alice", "video")
    assert rec.first_payload is not None and is_vp8_keyframe(rec.first_payload)
    player.video.stop()


@pytest.mark.parametrize("replay_age", [2.5, 0.0])
async def test_a_new_subscriber_starts_on_the_cached_keyframe_if_it_is_fresh_enough(
    make_harness: Callable[..., Harness], vp8_file: Path, replay_age: float
) -> None:
    """The file has a keyframe every 2 s and its player cannot make one on request: with a replay age that covers
    the whole GOP the subscriber starts on the latest cached keyframe; with none it waits for the next one."""
    h = make_harness()
    alice = await h.join(info("alice"))
    player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await alice.publish([("camera", player.video)])
    (track,) = h.room.participant("alice").published_tracks()
    track.replay_age = replay_age
    await wait_for(lambda: track.keyframes >= 1, within=5)
    keyframes_before = track.keyframes
    bob = await h.join(info("bob"))
    await wait_for(lambda: video_packets(bob, "alice") > 10, within=5)
    (rec,) = bob.by_publisher("alice", "video")
    assert rec.first_payload is not None and is_vp8_keyframe(rec.first_payload)
    subscriber = h.room.participant("bob").subscriber
    assert subscriber is not None
    (slot,) = [s for s in subscriber.slots if s.track is track]
    if replay_age:
        assert slot.replayed >= 1
        assert len(rec.seqs) == max(rec.seqs) - min(rec.seqs) + 1  # the replay and the live packets join up
    else:
        assert slot.replayed == 0 and track.keyframes > keyframes_before
    player.video.stop()


async def test_nack_served_from_cache_under_injected_loss(make_harness: Callable[..., Harness], vp8_file: Path) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await alice.publish([("camera", player.video)])
    bob = await h.join(info("bob"), passthrough=True)  # bob's aiortc receiver NACKs lost packets
    await wait_for(lambda: video_packets(bob, "alice") > 20, within=10)
    subscriber = h.room.participant("bob").subscriber
    assert subscriber is not None
    (slot,) = [s for s in subscriber.slots if s.track is not None]
    slot.drop = lambda seq: seq % 5 == 3  # lose 20 % on the SFU -> bob path
    await wait_for(lambda: slot.dropped_by_hook >= 25, within=15)
    slot.drop = None
    await asyncio.sleep(1.0)
    (rec,) = bob.by_publisher("alice", "video")
    dropped = {s for s in range(min(rec.seqs), max(rec.seqs)) if s not in rec.seqs and s % 5 == 3}
    assert len(dropped) >= 25
    recovered = dropped & rec.recovered
    assert len(recovered) / len(dropped) >= 0.95, (len(recovered), len(dropped))
    assert slot.nacks_served >= len(recovered) and slot.nacks_received >= len(dropped)
    assert rec.rtx_packets >= len(recovered)  # RTX was negotiated, so retransmissions are RTX
    track = h.room.participant("alice").published_tracks()[0]
    assert track.nacks_upstream == 0
    served = REGISTRY.get_sample_value("classmesh_media_nacks_served_total", {"node": "test"})
    assert served is not None and served >= len(recovered)
    # bob's receiver reports give the output a loss figure and, once it echoed an SR, an RTT.
    await wait_for(lambda: slot.rtt is not None, within=5)
    assert slot.rtt is not None and 0 <= slot.rtt < 0.5
    # A NACK the cache cannot answer goes upstream to alice with her own sequence number.
    newest = rec.timestamps[-1][0]
    track.cache.clear()
    await send_raw_rtcp(bob.sub.getTransceivers()[0], build_nack(4321, slot.tap.ssrc, [newest]))
    await wait_for(lambda: track.nacks_upstream == 1 and len(alice.nacks) > 0, within=5)
    assert slot.original_seq(newest) in alice.nacks
    player.video.stop()


async def test_audio_level_gives_speaking_events_and_talk_time(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    tone = ToneTrack()
    await alice.publish([("microphone", tone)])
    await h.join(info("bob"))
    await asyncio.sleep(0.5)
    assert not h.of_type(ev.SpeakingChanged)
    tone.loud = True
    await wait_for(lambda: bool(h.of_type(ev.SpeakingChanged)), within=5)
    await asyncio.sleep(1.5)
    tone.loud = False
    await wait_for(lambda: len(h.of_type(ev.SpeakingChanged)) >= 2, within=5)
    started, stopped = h.of_type(ev.SpeakingChanged)[:2]
    assert (started.participant_id, started.speaking) == ("alice", True)
    assert (stopped.participant_id, stopped.speaking) == ("alice", False)
    assert 1300 <= stopped.talk_time_ms <= 2600
    assert (started.segment_ms, stopped.segment_ms) == (0, stopped.talk_time_ms)
    participant = h.room.participant("alice")
    assert participant.talk_time_ms == stopped.talk_time_ms and not participant.speaking


async def test_renegotiation_when_participants_leave_and_join(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness()
    carol = await h.join(info("carol", publish=""))
    bob = await h.join(info("bob"))
    bob_player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await bob.publish([("camera", bob_player.video)])
    await wait_for(lambda: video_packets(carol, "bob") > 30, within=10)
    offers = carol.offers
    (bob_rec,) = carol.by_publisher("bob", "video")
    mid = bob_rec.mid
    await h.room.leave("bob")
    bob_player.video.stop()
    await wait_for(lambda: carol.offers > offers, within=5)
    assert [e.participant_id for e in h.of_type(ev.TrackUnpublished)] == ["bob"]
    assert [e.participant_id for e in h.of_type(ev.ParticipantLeft)] == ["bob"]
    await wait_for(lambda: "a=inactive" in carol.sub.remoteDescription.sdp, within=5)
    bob_packets = bob_rec.packets
    last_seq = bob_rec.timestamps[-1][0]
    # dave takes the seat: his camera reuses the inactive transceiver, the stream continues.
    dave = await h.join(info("dave"))
    dave_player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await dave.publish([("camera", dave_player.video)])
    rec = carol.received[mid]
    await wait_for(lambda: rec.publisher == "dave" and rec.packets > bob_packets + 20, within=10)
    assert len(carol.sub.getTransceivers()) == 1
    assert rec.label.startswith("camera:") and rec.ssrc == bob_rec.ssrc
    first_dave_seq = rec.timestamps[bob_packets][0]
    assert first_dave_seq == (last_seq + 1) & 0xFFFF
    assert rec.first_payload is not None
    dave_player.video.stop()


async def test_room_full_duplicate_and_unknown(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(RoomSettings(max_participants=2))
    await h.join(info("alice"))
    await h.join(info("bob"))
    with pytest.raises(RoomFullError) as full:
        await h.join(info("carol"))
    assert full.value.code == "room_full" and isinstance(full.value, MediaError)
    with pytest.raises(DuplicateParticipantError):
        await h.join(info("alice"))
    await h.join(info("recorder", role="recorder", publish="", hidden=True))  # takes no seat
    with pytest.raises(UnknownParticipantError):
        h.room.participant("nobody")
    assert [e.participant_id for e in h.of_type(ev.ParticipantJoined)] == ["alice", "bob"]


async def test_track_limit(make_harness: Callable[..., Harness], vp8_file: Path) -> None:
    h = make_harness(RoomSettings(max_tracks=1))
    alice = await h.join(info("alice"))
    player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    with pytest.raises(TrackLimitError) as err:
        await alice.publish([("microphone", ToneTrack()), ("camera", player.video)])
    assert err.value.code == "track_limit"
    assert h.room.stats()["published_tracks"] == 0
    player.video.stop()


async def test_observer_cannot_publish_and_permissions_are_per_source(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness()
    observer = await h.join(info("olga", role="observer", publish=""))
    with pytest.raises(PermissionDeniedError) as err:
        await observer.publish([("microphone", ToneTrack())])
    assert err.value.code == "permission_denied"
    audio_only = await h.join(info("sam", publish="audio"))
    player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    with pytest.raises(PermissionDeniedError):
        await audio_only.publish([("screen", player.video)])
    player.video.stop()


async def test_remb_below_bitrate_pauses_video_and_recovery_resumes_it(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness(FAST_REMB)
    alice = await h.join(info("alice"))
    _, player = await publish_av(alice, vp8_file)
    bob = await h.join(info("bob"))  # counts only: bob's aiortc sends no REMB of its own
    await wait_for(lambda: video_packets(bob, "alice") > 60, within=10)
    subscriber = h.room.participant("bob").subscriber
    assert subscriber is not None
    (video_slot,) = [s for s in subscriber.slots if s.kind == "video"]
    transceiver = bob.sub.getTransceivers()[0]

    remb = {"bps": 20_000}

    async def keep_sending_remb() -> None:
        while True:
            await send_raw_rtcp(transceiver, build_remb(1234, remb["bps"], [video_slot.tap.ssrc]))
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(keep_sending_remb())
    try:
        started = asyncio.get_running_loop().time()
        await wait_for(lambda: video_slot.paused, within=5)
        assert asyncio.get_running_loop().time() - started >= FAST_REMB.remb_pause_after - 0.05
        assert subscriber.video_paused
        quality = [e for e in h.of_type(ev.ConnectionQuality) if e.participant_id == "bob"]
        assert quality and quality[-1].quality == "poor"
        await asyncio.sleep(0.2)
        video_before, audio_before = video_packets(bob, "alice"), audio_packets(bob, "alice")
        await asyncio.sleep(1.0)
        assert video_packets(bob, "alice") == video_before  # video paused
        assert audio_packets(bob, "alice") > audio_before + 15  # audio keeps flowing
        plis = len(alice.keyframe_requests)
        remb["bps"] = 50_000_000
        await wait_for(lambda: not video_slot.paused, within=5)
        await wait_for(lambda: video_packets(bob, "alice") > video_before + 20, within=5)
        await wait_for(lambda: len(alice.keyframe_requests) > plis, within=3)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    (rec,) = bob.by_publisher("alice", "video")
    # The first packet after the pause continues the sequence: no gap for the browser to NACK.
    before_pause, after_pause = rec.timestamps[video_before - 1], rec.timestamps[video_before]
    assert after_pause[0] == (before_pause[0] + 1) & 0xFFFF
    assert 0 < (after_pause[1] - before_pause[1]) & 0xFFFFFFFF < 90000 * 5
    assert h.of_type(ev.ConnectionQuality)[-1].quality != "poor"
    player.video.stop()


async def test_hidden_recorder_receives_everything_unannounced(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    _, player = await publish_av(alice, vp8_file)
    recorder = await h.join(info("rec-1", role="recorder", publish="", hidden=True))
    await wait_for(lambda: video_packets(recorder, "alice") > 30 and audio_packets(recorder, "alice") > 20)
    assert all(e.participant_id != "rec-1" for e in h.events if not isinstance(e, ev.SubscriberOffer))
    assert h.room.stats()["hidden_participants"] == 1
    player.video.stop()


async def test_node_stream_limit_caps_forwarding(make_harness: Callable[..., Harness], vp8_file: Path) -> None:
    limits = NodeLimits(max_streams=1)
    h = make_harness(limits=limits)
    alice = await h.join(info("alice"))
    _, player = await publish_av(alice, vp8_file)
    bob = await h.join(info("bob"))
    await wait_for(lambda: sum(r.packets for r in bob.received.values()) > 20)
    assert limits.forwarded == 1 and h.room.stats()["forwarded_tracks"] == 1
    await h.room.leave("bob")
    assert limits.forwarded == 0
    player.video.stop()


async def test_mute_stops_forwarding_and_unmute_restarts_at_a_keyframe(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await alice.publish([("camera", player.video)])
    bob = await h.join(info("bob"))
    await wait_for(lambda: video_packets(bob, "alice") > 30)
    h.room.participant("alice").set_muted("camera", True)
    await asyncio.sleep(0.2)
    before = video_packets(bob, "alice")
    await asyncio.sleep(0.8)
    assert video_packets(bob, "alice") == before
    (rec,) = bob.by_publisher("alice", "video")
    h.room.participant("alice").set_muted("camera", False)
    await wait_for(lambda: video_packets(bob, "alice") > before + 10)
    assert len(rec.seqs) == max(rec.seqs) - min(rec.seqs) + 1
    player.video.stop()


async def test_close_closes_participants_and_is_idempotent(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    _, player = await publish_av(alice, vp8_file)
    await h.join(info("bob"))
    await h.room.close()
    await h.room.close()
    assert h.room.participants == {} and h.room.closed
    assert sorted(e.reason for e in h.of_type(ev.ParticipantLeft)) == ["room_closed", "room_closed"]
    player.video.stop()


async def test_client_closing_its_connection_leaves_the_room(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    player = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await alice.publish([("camera", player.video)])
    bob = await h.join(info("bob"))
    await wait_for(lambda: video_packets(bob, "alice") > 10)
    await alice.pub.close()
    await wait_for(lambda: bool(h.of_type(ev.ParticipantLeft)), within=10)
    (left,) = h.of_type(ev.ParticipantLeft)
    assert left.participant_id == "alice" and left.reason.startswith("connection_")
    assert "alice" not in h.room.participants
    assert [e.participant_id for e in h.of_type(ev.TrackUnpublished)] == ["alice"]
    player.video.stop()


async def test_publisher_renegotiates_screen_share_on_and_off(
    make_harness: Callable[..., Harness], vp8_file: Path
) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    camera = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await alice.publish([("camera", camera.video)])
    bob = await h.join(info("bob"))
    await wait_for(lambda: video_packets(bob, "alice") > 10)
    screen = MediaPlayer(str(vp8_file), decode=False, loop=True)
    await alice.publish([("screen", screen.video)])  # adds a transceiver and offers again
    await wait_for(lambda: len([r for r in bob.by_publisher("alice", "video") if r.packets > 10]) == 2)
    labels = sorted(r.label.split(":")[0] for r in bob.by_publisher("alice", "video"))
    assert labels == ["camera", "screen"]
    assert [e.source for e in h.of_type(ev.TrackPublished)] == ["camera", "screen"]
    screen_transceiver = alice.pub.getTransceivers()[1]
    screen_transceiver.direction = "inactive"
    await alice.renegotiate()
    await wait_for(lambda: bool(h.of_type(ev.TrackUnpublished)))
    (gone,) = h.of_type(ev.TrackUnpublished)
    assert (gone.participant_id, gone.source) == ("alice", "screen")
    assert [t.source for t in h.room.participant("alice").published_tracks()] == ["camera"]
    camera.video.stop()
    screen.video.stop()


async def test_bad_signaling_gets_specific_errors(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    alice = await h.join(info("alice"))
    assert alice.participant is not None
    with pytest.raises(NegotiationError) as no_offer:
        await alice.participant.subscriber_answer("v=0\r\n")
    assert no_offer.value.code == "negotiation_error"
    with pytest.raises(InvalidSdpError) as bad:
        await alice.participant.publish("this is not sdp", {})
    assert bad.value.code == "invalid_sdp"
    alice.pub.addTransceiver(ToneTrack(), direction="sendonly")
    await alice.pub.setLocalDescription(await alice.pub.createOffer())
    with pytest.raises(InvalidSdpError, match="does not fit"):
        await alice.participant.publish(alice.pub.localDescription.sdp, {"0": "camera"})
