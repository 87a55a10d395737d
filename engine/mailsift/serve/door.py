"""What every stream door (milter, spamd, HTTP) does the same way: listen,
stop accepting at once on SIGTERM, let the work in flight finish within a
grace period.  Only the protocol differs, so a new door writes its session
handler and nothing of this."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import Service


class StreamDoor:
    """Base of a door on ``asyncio.start_server``.  Subclasses set ``name``,
    implement ``_session(reader, writer)`` (counting ``active`` while a
    request is served) and may widen :meth:`busy` or :meth:`drop`."""

    name = ""
    #: the StreamReader's line limit (None: asyncio's default)
    line_limit: int | None = None

    def __init__(self, service: Service, host: str, port: int):
        self.service = service
        self.host, self.port = host, port
        self.server: asyncio.base_events.Server | None = None
        self.active = 0

    async def start(self) -> None:
        kwargs = {"limit": self.line_limit} if self.line_limit else {}
        self.server = await asyncio.start_server(self._session, self.host, self.port, **kwargs)
        self.port = self.server.sockets[0].getsockname()[1]
        logging.getLogger(f"mailsift.{self.name}").info(
            "%s door listening on %s:%d", self.name, self.host, self.port
        )

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting: new connections are refused from here on."""
        if self.server is not None:
            self.server.close()

    def busy(self) -> bool:
        """Is work in flight that :meth:`stop` should wait for?"""
        return self.active > 0

    def drop(self) -> None:
        """Close what is left once the grace period is over (default: nothing)."""

    async def stop(self, grace: float = 30.0) -> None:
        """Let work in flight finish for up to ``grace`` seconds, then
        :meth:`drop` what is left."""
        if self.server is None:
            return
        self.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.busy() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.drop()
        try:
            await asyncio.wait_for(self.server.wait_closed(), 5)
        except TimeoutError:
            pass
