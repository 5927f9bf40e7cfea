"""Property-based fuzzing of the whole API with schemathesis, driven from its published OpenAPI document.

The API runs on a real SQLite store in a background thread (schemathesis calls it synchronously over
loopback HTTP). Every operation gets positive and negative cases; the run is bounded to about a minute.
Checks: no 5xx, documented status codes and content types, responses matching their schemas, invalid
input rejected, and authentication not ignored.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator.api import build_api_app, create_api_key
from orchestrator.store import Store
from tests.orchestrator.conftest import free_port

BUDGET_SECONDS = 90.0
EXAMPLES_PER_MODE = 12


class LiveApi:
    """The API mounted at /v1 of an aiohttp server on 127.0.0.1, in its own thread and event loop."""

    def __init__(self, db: Path) -> None:
        self.port = free_port()
        self.token = ""
        self._db = db
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="schemathesis-api", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"API did not start: {self._error!r}")

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        store = await Store.open(f"sqlite+aiosqlite:///{self._db}")
        _, self.token = await create_api_key(store, "schemathesis", ["admin"])
        await _seed(store)
        parent = web.Application()
        parent.add_subapp("/v1", build_api_app(store))
        runner = web.AppRunner(parent, max_line_size=65536)  # as core.service.ServiceHost runs it
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await store.close()


async def _seed(store: Store) -> None:
    """Some data, so that list responses carry items whose schemas get checked too."""
    from datetime import UTC, datetime, timedelta

    from orchestrator.store.models import (
        AvailabilityException,
        BookingDraft,
        Instructor,
        InstructorId,
        Occurrence,
        Student,
        StudentId,
        Subject,
        SubjectId,
        WeeklyWindow,
    )

    start = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
    await store.create_subject(Subject(SubjectId("math"), "Mathematics"))
    await store.create_instructor(
        Instructor(
            InstructorId("ins_a"),
            "Ada",
            "ada@example.org",
            "Europe/London",
            {SubjectId("math"): 5},
            (WeeklyWindow(0, "08:00", "24:00"),),
            (AvailabilityException(start + timedelta(days=30), start + timedelta(days=31), "leave"),),
            buffer_minutes=10,
            max_sessions_per_day=5,
        )
    )
    await store.create_student(Student(StudentId("stu_1"), "Kenji", "Asia/Tokyo", "JP", levels={SubjectId("math"): 2}))
    draft = BookingDraft(
        SubjectId("math"), (StudentId("stu_1"),), start, 60, InstructorId("ins_a"), "FREQ=WEEKLY;COUNT=2"
    )
    occurrences = [
        Occurrence(i, start + timedelta(days=7 * i), start + timedelta(days=7 * i, hours=1), InstructorId("ins_a"))
        for i in range(2)
    ]
    _, sessions = await store.create_booking(draft, occurrences)
    await store.record_join(sessions[0].session_id, "stu_1", "student", at=start)
    await store.upsert_recording(sessions[0].session_id, status="ready", coverage=1.0, files=["a.mp4"])
    await store.create_subscription("http://127.0.0.1:9/hook", ["booking.created"], "whsec_AAAA")


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    api = LiveApi(tmp_path_factory.mktemp("schemathesis") / "classmesh.db")
    api.start()
    try:
        yield api
    finally:
        api.stop()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    label: str,
    live_api: LiveApi,
    http: requests.Session,
    headers: dict[str, str],
    tried: dict[str, int],
) -> Any:
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        tried[label] = tried.get(label, 0) + 1
        case.call_and_validate(base_url=live_api.base_url, session=http, headers=headers, checks=CHECKS, timeout=10)

    return run


def test_api_survives_schemathesis(live_api: LiveApi) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {live_api.token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    deadline = time.monotonic() + BUDGET_SECONDS
    failures: list[str] = []
    tried: dict[str, int] = {}
    http = requests.Session()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                break
            label = f"{operation.label} [{mode.value}]"

            run = _fuzz(operation, mode, label, live_api, http, headers, tried)
            try:
                run()
            except Exception as exc:  # collect every operation's failure, then report them together
                failures.append(f"{label}: {exc}")

    print(f"schemathesis: {sum(tried.values())} cases over {len(tried)} operation/mode pairs")
    assert not failures, "\n\n".join(failures)
    assert len(tried) >= 2 * len(operations) * 0.8, f"budget ran out early: only {len(tried)} runs"
