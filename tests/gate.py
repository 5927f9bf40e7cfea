"""A TCP relay on a loopback port that a test can close and open again: an outage of the server behind it (S3) as
its clients see it, connections refused and open ones cut, without touching the server."""

from __future__ import annotations

import asyncio
import contextlib

from tests.conftest import free_port


class TcpGate:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.open = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpGate:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    def close_gate(self) -> None:
        """Refuse new connections (accepted and closed at once) and cut the open ones."""
        self.open = False
        for writer in list(self._writers):
            writer.close()

    def open_gate(self) -> None:
        self.open = True

    async def stop(self) -> None:
        self.close_gate()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
