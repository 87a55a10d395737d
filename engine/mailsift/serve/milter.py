"""The milter door: Sendmail's mail filter protocol, version 6, on asyncio.

Postfix (``smtpd_milters = inet:127.0.0.1:PORT``) and Sendmail talk to a
milter over one TCP connection per SMTP session, in packets of a 4-byte
big-endian length, one command byte and the command's data.  The MTA sends
the connection, HELO, MAIL, RCPT, each header, the end of the headers and the
body in chunks; the milter answers each with "continue", and at the end of
the message with header changes followed by a final verdict.

Why not pymilter: it wraps Debian's libmilter, a C library that runs every
connection on its own thread and calls back into Python under the GIL.  The
protocol is a few dozen lines of framing; on asyncio it shares the event loop
and the scoring pool with every other door, needs no compiler or -dev
package, and a broken peer costs one coroutine, not a thread.

What this door does with a message:

* the client address (the CONNECT packet, else the ``{client_addr}`` or
  ``_`` macro), HELO, MAIL FROM and ``{auth_authen}`` become the rules'
  :class:`~mailsift.rules.Context`; a message from an authenticated client is
  marked ``authenticated=True`` (a submission, not inbound mail);
* incoming ``X-Spam-*`` / ``X-Mailsift-Report`` headers are deleted
  (SMFIR_CHGHEADER with an empty value, one per occurrence, by index), so a
  sender cannot pre-set ``X-Spam-Flag: NO``; ours are added (SMFIR_ADDHEADER);
* at or above the reject threshold the reply is ``550 5.7.1``;
* if scoring fails or overruns its deadline: ``451 4.7.1`` or pass marked
  ``Unknown``, as ``[milter] on_error`` says;
* a message above ``max_message_size`` is not kept in memory: it passes
  unscanned (logged) or is tempfailed, as ``on_oversize`` says.

Protocol abuse (a packet longer than :data:`MAX_PACKET`, an unknown command,
a truncated frame, malformed data) closes that one connection with a log
line; the MTA then applies its ``milter_default_action``.

The door scores through the shared :class:`mailsift.serve.service.Service`
(``mailsift serve --milter HOST:PORT``), as every door does.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Config, MilterConfig
from ..report import replaced_on_scan, spam_headers
from ..rules import Context
from ..score import REJECT, Verdict
from ..users import user_for_recipients
from . import doorlog
from .door import StreamDoor

log = logging.getLogger("mailsift.milter")

DOOR = "milter"
VERSION = 6

# commands (MTA -> milter)
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# replies (milter -> MTA)
SMFIR_ACCEPT = b"a"
SMFIR_CONTINUE = b"c"
SMFIR_ADDHEADER = b"h"
SMFIR_CHGHEADER = b"m"
SMFIR_REPLYCODE = b"y"

# actions the milter may take (negotiated)
SMFIF_ADDHDRS = 0x01
SMFIF_CHGHDRS = 0x10
ACTIONS = SMFIF_ADDHDRS | SMFIF_CHGHDRS

# protocol steps the milter asks the MTA to leave out (if the MTA offers to)
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
STEPS_NOT_WANTED = SMFIP_NOUNKNOWN | SMFIP_NODATA

#: longest packet accepted.  Postfix sends body chunks of at most 64 KiB and
#: headers of at most header_size_limit (100 KiB by default); anything longer
#: is abuse.
MAX_PACKET = 1024 * 1024

#: commands that each get one "continue"
_CONTINUE = {SMFIC_CONNECT, SMFIC_HELO, SMFIC_MAIL, SMFIC_RCPT, SMFIC_DATA, SMFIC_HEADER, SMFIC_EOH}
_CONTINUE |= {SMFIC_BODY, SMFIC_UNKNOWN}


class Service(Protocol):
    """What the door needs of :class:`mailsift.serve.service.Service`."""

    config: Config

    async def score(
        self,
        raw: bytes,
        context: Context | None = None,
        door: str = "",
        deadline: float | None = None,
        user: str | None = None,
    ) -> Verdict: ...


class ProtocolError(Exception):
    """The peer broke the milter protocol; the connection is closed."""


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    """One milter packet: length (command byte included), command, data."""
    return struct.pack(">I", len(data) + 1) + cmd + data


def _cstrings(data: bytes, what: str) -> list[str]:
    """NUL-terminated strings -> text (latin-1: bytes pass through as they are)."""
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what}: data is not NUL-terminated")
    return [s.decode("latin-1") for s in data[:-1].split(b"\0")]


def _reply_code(text: str) -> bytes:
    """SMFIR_REPLYCODE data: '550 5.7.1 text' (a '%' would be a format
    character to Sendmail, so it is doubled)."""
    clean = " ".join(text.split()).replace("%", "%%")
    return packet(SMFIR_REPLYCODE, clean.encode("ascii", "replace") + b"\0")


def _add_header(name: str, value: str) -> bytes:
    return packet(SMFIR_ADDHEADER, name.encode("ascii") + b"\0" + value.encode("ascii", "replace") + b"\0")


def _delete_header(name: str, index: int) -> bytes:
    return packet(SMFIR_CHGHEADER, struct.pack(">I", index) + name.encode("latin-1") + b"\0\0")


@dataclass
class _Message:
    """What one SMTP transaction has sent so far."""

    mail_from: str = ""
    rcpts: list[str] = field(default_factory=list)
    head: list[bytes] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    oversize: bool = False
    #: (name as sent, occurrence index from 1) of incoming headers of ours
    ours: list[tuple[str, int]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


class MilterSession:
    """One MTA connection: read packets, answer them, until QUIT or EOF."""

    def __init__(self, service: Service, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.service = service
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.negotiated = False
        #: an end-of-message is being scored (a stopping door waits for it)
        self.scoring = False
        self._reset_connection()

    @property
    def cfg(self) -> MilterConfig:
        """``[milter]`` as it is now (a reload applies to connections already open:
        Postfix keeps one for the whole SMTP session)."""
        return self.service.config.milter

    def _reset_connection(self) -> None:
        self.client_ip = ""
        self.client_name = ""
        self.helo = ""
        self.conn_macros: dict[str, str] = {}
        self.msg = _Message()

    async def run(self) -> None:
        try:
            while True:
                cmd, data = await self._read()
                if cmd == SMFIC_QUIT:
                    return
                out = await self._handle(cmd, data)
                if out:
                    self.writer.write(out)
                    await self.writer.drain()
        except ProtocolError as exc:
            log.warning("milter %s: protocol error, closing the connection: %s", self.peer, exc)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                log.warning("milter %s: connection closed inside a packet (truncated frame)", self.peer)
        except TimeoutError:
            log.warning("milter %s: idle for %g s, closing the connection", self.peer, self.cfg.idle_timeout)
        except (ConnectionError, OSError) as exc:
            log.info("milter %s: connection lost (%s)", self.peer, exc)
        finally:
            self.writer.close()

    async def _read(self) -> tuple[bytes, bytes]:
        """One packet; EOF between packets ends the session quietly."""
        async with asyncio.timeout(self.cfg.idle_timeout):
            head = await self.reader.readexactly(4)
            (length,) = struct.unpack(">I", head)
            if length < 1 or length > MAX_PACKET:
                raise ProtocolError(f"packet length {length} outside 1..{MAX_PACKET}")
            body = await self.reader.readexactly(length)
        return body[:1], body[1:]

    async def _handle(self, cmd: bytes, data: bytes) -> bytes:
        if cmd == SMFIC_OPTNEG:
            return self._optneg(data)
        if not self.negotiated:
            raise ProtocolError(f"command {cmd!r} before option negotiation")
        if cmd == SMFIC_MACRO:
            self._macros(data)
            return b""
        if cmd == SMFIC_ABORT:
            self.msg = _Message()
            return b""
        if cmd == SMFIC_QUIT_NC:
            self._reset_connection()
            return b""
        if cmd == SMFIC_BODYEOB:
            if data:
                self._body(data)
            try:
                return await self._end_of_message()
            finally:
                self.msg = _Message()
        if cmd not in _CONTINUE:
            raise ProtocolError(f"unknown command {cmd!r}")
        if cmd == SMFIC_CONNECT:
            self._connect(data)
        elif cmd == SMFIC_HELO:
            self.helo = _cstrings(data, "HELO")[0]
        elif cmd == SMFIC_MAIL:
            self.msg = _Message(macros=self.msg.macros)  # a new transaction
            args = _cstrings(data, "MAIL")
            self.msg.mail_from = args[0].strip().removeprefix("<").removesuffix(">")
        elif cmd == SMFIC_RCPT:
            self.msg.rcpts.append(_cstrings(data, "RCPT")[0].strip().removeprefix("<").removesuffix(">"))
        elif cmd == SMFIC_HEADER:
            self._header(data)
        elif cmd == SMFIC_BODY:
            self._body(data)
        return packet(SMFIR_CONTINUE)

    def _optneg(self, data: bytes) -> bytes:
        if len(data) < 12:
            raise ProtocolError(f"option negotiation of {len(data)} bytes (needs 12)")
        version, actions, steps = struct.unpack(">III", data[:12])
        if version < 2:
            raise ProtocolError(f"MTA speaks milter protocol version {version}; need 2 or later")
        if actions & ACTIONS != ACTIONS:
            log.warning("milter %s: MTA does not allow adding and changing headers (actions %#x)",
                        self.peer, actions)  # fmt: skip
        self.negotiated = True
        reply = struct.pack(">III", min(version, VERSION), actions & ACTIONS, steps & STEPS_NOT_WANTED)
        return packet(SMFIC_OPTNEG, reply)

    def _macros(self, data: bytes) -> None:
        if not data:
            raise ProtocolError("macro packet without a command code")
        stage, rest = data[:1], data[1:]
        pairs = _cstrings(rest, "macros") if rest else []
        if len(pairs) % 2:
            pairs = pairs[:-1]  # a name without a value: ignore it
        values = dict(zip(pairs[::2], pairs[1::2]))
        if stage in (SMFIC_CONNECT, SMFIC_HELO):
            self.conn_macros.update(values)
        else:
            self.msg.macros.update(values)

    def _connect(self, data: bytes) -> None:
        name, sep, rest = data.partition(b"\0")
        if not sep or not rest:
            raise ProtocolError("CONNECT without an address family")
        self.client_name = name.decode("latin-1")
        family = rest[:1]
        if family in (b"4", b"6"):
            if len(rest) < 4:
                raise ProtocolError("CONNECT truncated before the address")
            self.client_ip = _cstrings(rest[3:], "CONNECT address")[0].removeprefix("IPv6:")

    def _header(self, data: bytes) -> None:
        parts = data.split(b"\0")
        if len(parts) < 3 or parts[-1] != b"":
            raise ProtocolError("HEADER is not name NUL value NUL")
        name, value = parts[0], b"\0".join(parts[1:-1])
        key = name.decode("latin-1").lower()
        m = self.msg
        m.counts[key] = m.counts.get(key, 0) + 1
        if replaced_on_scan(key):
            m.ours.append((name.decode("latin-1"), m.counts[key]))
        self._keep(name + b": " + value + b"\r\n", m.head)

    def _body(self, data: bytes) -> None:
        self._keep(data, self.msg.body)

    def _keep(self, chunk: bytes, into: list[bytes]) -> None:
        m = self.msg
        m.size += len(chunk)
        if m.size > self.cfg.max_message_size:
            if not m.oversize:
                m.oversize = True
                m.head.clear()
                m.body.clear()
            return
        into.append(chunk)

    def context(self) -> Context:
        macros = {**self.conn_macros, **self.msg.macros}
        ip = self.client_ip or macros.get("{client_addr}", "")
        if not ip and "[" in macros.get("_", ""):  # "name [addr]"
            ip = macros["_"].rpartition("[")[2].partition("]")[0]
        return Context(
            client_ip=ip.removeprefix("IPv6:"),
            helo=self.helo,
            mail_from=self.msg.mail_from,
            authenticated=bool(macros.get("{auth_authen}")),
        )

    async def _end_of_message(self) -> bytes:
        m = self.msg
        out = [_delete_header(name, index) for name, index in sorted(m.ours, key=lambda x: -x[1])]
        verdict: Verdict | None = None
        context = self.context()
        if m.oversize:
            if self.cfg.on_oversize == "tempfail":
                self._log(context, None, "tempfail", "oversize")
                return _reply_code("451 4.3.4 message too large to scan; try again later")
            self._log(context, None, "accept", "oversize, not scanned")
            out.append(_add_header(
                "X-Spam-Status", f"Unknown, not scanned: larger than {self.cfg.max_message_size} bytes"
            ))  # fmt: skip
            return b"".join(out) + packet(SMFIR_ACCEPT)
        raw = b"".join(m.head) + b"\r\n" + b"".join(m.body)
        error = ""
        self.scoring = True
        try:
            # the pool kills a worker at the deadline; the timeout here also covers waiting for one
            async with asyncio.timeout(self.cfg.scoring_deadline + 1.0):
                # one recipient: theirs ([users] naming), else the site's
                user = user_for_recipients(m.rcpts, self.service.config.users)
                verdict = await self.service.score(raw, context, DOOR, self.cfg.scoring_deadline, user)
        except TimeoutError:
            error = f"scoring took over {self.cfg.scoring_deadline:g} s"
        except Exception as exc:  # a broken scorer must not lose the message
            error = f"scoring failed: {type(exc).__name__}: {exc}"
        finally:
            self.scoring = False
        if error:  # said in the message's one line (at WARNING)
            if self.cfg.on_error == "tempfail":
                self._log(context, None, "tempfail", error)
                return _reply_code("451 4.7.1 spam scoring failed; try again later")
        if verdict is not None and verdict.action == REJECT and self.cfg.reject:
            self._log(context, verdict, "reject")
            return _reply_code(f"550 5.7.1 message rejected as spam (score {verdict.score:.1f})")
        out += [_add_header(name, value) for name, value in spam_headers(verdict)]
        self._log(context, verdict, "accept", error)
        return b"".join(out) + packet(SMFIR_ACCEPT)

    def _log(self, context: Context, verdict: Verdict | None, outcome: str, note: str = "") -> None:
        """The one line per message (WARNING when scoring failed or it was oversize);
        in JSON mode the same fields as the SMTP door's line (:mod:`.doorlog`)."""
        m = self.msg
        macros = {**self.conn_macros, **m.macros}
        ms = (time.perf_counter() - m.started) * 1000
        record = {
            "event": "message", "door": DOOR, "queue_id": macros.get("i", ""),
            "client": context.client_ip, "helo": context.helo, "from": m.mail_from, "to": list(m.rcpts),
            "auth": bool(context.authenticated), "size": m.size, **doorlog.verdict_fields(verdict),
            "outcome": outcome, "ms": round(ms, 1),
        }  # fmt: skip
        if note:
            record["error" if verdict is None else "note"] = note[:300]
        log.log(
            logging.WARNING if note and verdict is None else logging.INFO,
            "%s milter client=%s helo=%s from=<%s> to=%s auth=%s size=%d score=%s action=%s "
            "outcome=%s ms=%.1f%s",
            macros.get("i", "-"), context.client_ip or "-", context.helo or "-", m.mail_from,
            ",".join(m.rcpts), "yes" if context.authenticated else "no", m.size,
            f"{verdict.score:.2f}" if verdict else None, verdict.action if verdict else "unknown",
            outcome, ms, f" ({note})" if note else "",
            extra={"mailsift": record},
        )  # fmt: skip


class MilterDoor(StreamDoor):
    """The milter door of ``mailsift serve`` (``--milter HOST:PORT``,
    ``[serve] milter``): one :class:`MilterSession` per MTA connection, all
    scoring through the shared service."""

    name = DOOR

    def __init__(self, service: Service, host: str, port: int):
        super().__init__(service, host, port)
        self.sessions: set[MilterSession] = set()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = MilterSession(self.service, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:  # never let one connection's bug reach the server
            log.exception("milter: session failed")
            writer.close()
        finally:
            self.sessions.discard(session)

    # close(): Postfix's next connection is refused and it applies
    # milter_default_action (tempfail in the README) until we are back.
    def busy(self) -> bool:
        """Messages being scored get their verdict within the grace period."""
        return any(s.scoring for s in self.sessions)

    def drop(self) -> None:
        """Then every connection closes: an MTA between messages reconnects to
        whoever listens next; one mid-message tempfails it."""
        for session in list(self.sessions):
            session.writer.close()
