"""The ops dashboard in Chromium: with an API key it lists the exception queue (and works it), the live nodes,
the forecast and the sessions."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.api.keys import create_api_key
from tests.e2e.conftest import OpenPage

pytestmark = pytest.mark.browser


async def test_dashboard_shows_nodes_forecast_and_refuses_without_a_key(stack: Any, open_page: OpenPage) -> None:
    page, log = await open_page(f"{stack.orchestrator_url}/dashboard")
    await page.wait_for_function("document.getElementById('status').textContent.includes('API key')")
    store = stack.orchestrator.store
    await store.raise_exception(
        "student_at_risk:s9",
        "student_at_risk",
        "medium",
        subject_refs={"student_id": "s9"},
        details={"reasons": [{"rule": "consecutive_absences"}]},
    )
    await store.raise_exception(
        "recording_incomplete:ses_9", "recording_incomplete", "high", details={"gaps": [[1, 2]]}
    )
    _, key = await create_api_key(store, "ops", ["ops:read", "sessions:read", "exceptions:write"])
    await page.fill("#key", key)
    await page.click("#key-form button")
    await page.wait_for_function("document.querySelectorAll('#nodes tbody tr').length >= 2", timeout=10_000)
    rows = await page.eval_on_selector_all("#nodes tbody tr", "rows => rows.map(r => r.innerText)")
    assert any("eu-central-1" in r and "serving" in r for r in rows)
    assert any("us-east-1" in r for r in rows)
    regions = await page.eval_on_selector_all("#forecast tbody tr", "rows => rows.map(r => r.cells[0].innerText)")
    assert sorted(regions) == ["eu-central", "us-east"]
    assert "updated" in await page.inner_text("#status")
    # the queue: the high-severity one first, each with what it is about; resolving one takes it off the list
    queue = await page.eval_on_selector_all("#exceptions tbody tr", "rows => rows.map(r => r.innerText)")
    assert len(queue) == 2 and "recording incomplete" in queue[0] and "1 gap(s)" in queue[0], queue
    assert "student at risk" in queue[1] and "student_id s9" in queue[1] and "consecutive absences" in queue[1]
    await page.click("#exceptions tr[data-kind='student_at_risk'] button:text('Resolve')")
    await page.wait_for_function("document.querySelectorAll('#exceptions tbody tr').length === 1")
    assert (await store.exception_by_key("student_at_risk:s9")).status.value == "resolved"  # type: ignore[union-attr]
    # the week at a glance (nothing ended this week in this stack)
    assert (await page.inner_text("#week-summary")).startswith("0 sessions ended")
    assert "Every student attended" in await page.inner_text("#week-students")
    # a key without the scope is refused and says why
    _, weak = await create_api_key(stack.orchestrator.store, "weak", ["bookings:read"])
    await page.fill("#key", weak)
    await page.click("#key-form button")
    await page.wait_for_function("document.getElementById('status').textContent.startsWith('error')")
    assert not log.errors
