"""One forwarding worker of a media node: ``python -m media.worker``, started by its front (``media.front``).

The worker reads its ``WorkerLaunch`` as one JSON line on stdin. Then it runs a ``MediaNode`` in worker mode:
it answers ``media.<node_id>.w<k>``, forwards the media of the rooms its front gives it, and sends participant
messages and presence events itself, tagged with the node's id.

It lives exactly as long as its front. Its stdin stays open while the front lives: EOF means the front is
gone (even after a SIGKILL), and the worker then exits at once without telling its participants anything. The
orchestrator sees the node's heartbeats stop and re-places its rooms, as for any node that crashed. Sending
``removed`` from here would end the participants' sessions instead of letting them follow their rooms.

Signals: SIGTERM drains the worker (no new rooms; rooms run until they are empty or moved, until the drain
timeout) and then it exits 0. A second SIGTERM skips the rest of the drain. SIGINT is ignored: Ctrl-C in a
terminal reaches the whole process group, and only the front decides when its workers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time

from core.bus import open_bus
from core.logs import configure_logging
from core.service import ServiceState, freeze_startup_heap, run
from media.config import WorkerLaunch

logger = logging.getLogger("media.worker")  # not __name__: run with -m, that is __main__

EXIT_FRONT_GONE = 70
EXIT_BAD_LAUNCH = 2


def _watch_front(stdin: int, label: str) -> None:
    """In a thread: block on stdin until EOF, which means the front process is gone; then exit at once."""
    while True:
        try:
            data = os.read(stdin, 4096)
        except OSError:
            data = b""
        if not data:
            logger.error("worker=%s its front is gone (stdin closed): exiting now", label)
            os._exit(EXIT_FRONT_GONE)


async def serve(launch: WorkerLaunch) -> int:
    """Run one worker until SIGTERM (drain) or a ``drain`` request; returns the exit code."""
    from media.node import MediaNode

    config = launch.node
    label = config.rpc_id
    bus = open_bus(launch.bus_url)
    node = MediaNode(config, bus)
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_term() -> None:
        if stop.is_set():
            logger.warning("worker=%s SIGTERM again: skipping the rest of the drain", label)
            hurry.set()
        else:
            logger.info("worker=%s SIGTERM: draining (deadline %.0fs)", label, launch.drain_timeout)
            stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        await node.start()
        freeze_startup_heap()
        node.set_state(ServiceState.SERVING)
        logger.info("worker=%s pid=%s udp_ports=%s serving", label, os.getpid(), config.udp_ports)
        retire = asyncio.ensure_future(node.retire_requested.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([retire, stopped], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (retire, stopped):
            waiter.cancel()
        node.set_state(ServiceState.DRAINING)
        deadline = time.monotonic() + launch.drain_timeout
        drain = asyncio.ensure_future(node.drain(deadline))
        hurried = asyncio.ensure_future(hurry.wait())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(launch.drain_timeout):
                await asyncio.wait([drain, hurried], return_when=asyncio.FIRST_COMPLETED)
        for task in (drain, hurried):
            task.cancel()
        await asyncio.gather(drain, hurried, return_exceptions=True)
    finally:
        await node.close()
        node.set_state(ServiceState.STOPPED)
        await bus.close()
        loop.remove_signal_handler(signal.SIGTERM)
    logger.info("worker=%s stopped", label)
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = sys.stdin.buffer.readline()
    try:
        launch = WorkerLaunch.from_json(line.decode())
    except (ValueError, TypeError, KeyError) as exc:
        print(f"media.worker: a front starts this process with its launch on stdin ({exc})", file=sys.stderr)
        return EXIT_BAD_LAUNCH
    configure_logging(launch.log_format, launch.log_level)
    threading.Thread(
        target=_watch_front, args=(sys.stdin.fileno(), launch.node.rpc_id), name="front-watch", daemon=True
    ).start()
    return run(lambda: serve(launch))


if __name__ == "__main__":
    sys.exit(main())
