"""API test fixtures: the API mounted at /v1 of a parent app, on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from orchestrator.api import ApiHooks, build_api_app, create_api_key
from orchestrator.store import Store


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: Store
    token: str  # an admin key

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(
    store: Store, aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
) -> AsyncIterator[ApiFactory]:
    async def make(hooks: ApiHooks | None = None) -> Api:
        parent = web.Application()
        parent.add_subapp("/v1", build_api_app(store, hooks=hooks or ApiHooks()))
        client = await aiohttp_client(parent)
        _, token = await create_api_key(store, "test admin", ["admin"])
        return Api(client, store, token)

    yield make


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()
