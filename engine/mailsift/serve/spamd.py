"""The spamd door: SpamAssassin's spamc/spamd protocol (SPAMC/1.x), so Exim,
procmail, maildrop and every script that calls ``spamc`` can use mailsift.

One request per connection, HTTP-like (SpamAssassin's spamd/PROTOCOL)::

    CHECK SPAMC/1.5            SPAMD/1.1 0 EX_OK
    User: alice                Spam: True ; 7.3 / 5.0
    Content-length: 1234       Content-length: ...

    <message>                  <body, by method>

CHECK answers the ``Spam`` header only; SYMBOLS the rule names; REPORT (and
REPORT_IFSPAM, for spam only) the arithmetic of the verdict; PROCESS the whole
message with our headers; HEADERS only its header block (spamc adds the
body back); PING ``PONG``; SKIP nothing.  TELL learns through the service:
``Message-class: spam|ham`` with ``Set: local`` learns, ``Remove: local``
forgets; the answer carries ``DidSet``/``DidRemove: local`` only when the
model changed, which is how spamc tells "Message successfully un/learned"
from "Message was already un/learned"; TELL is accepted from loopback
clients only (spamc has no credentials).  ``User`` (``spamc -u alice``)
names whose model scores or learns (the site model plus what that user
taught it; without it, the site's); ``Compress: zlib`` bodies are inflated,
bounded.

A request that cannot be scored gets a sysexits code instead of EX_OK:
spamc then passes the message on unchanged (and ``spamc -c`` says 0/0), so a
failure here never loses mail.
"""

from __future__ import annotations

import asyncio
import logging
import zlib

from ..config import is_loopback
from ..report import add_headers_after_from_line, spam_headers
from ..score import Verdict, explain
from ..store import StoreError, user_name
from . import doorlog
from .door import StreamDoor
from .service import LearnRefused, NotMail

log = logging.getLogger("mailsift.spamd")

#: sysexits(3), as spamd answers them
EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, EX_SOFTWARE = 0, 64, 65, 67, 69, 70
EX_TEMPFAIL, EX_PROTOCOL, EX_NOPERM, EX_TOOBIG = 75, 76, 77, 98
_NAMES = {0: "EX_OK", 64: "EX_USAGE", 65: "EX_DATAERR", 67: "EX_NOUSER", 69: "EX_UNAVAILABLE",
          70: "EX_SOFTWARE", 75: "EX_TEMPFAIL", 76: "EX_PROTOCOL", 77: "EX_NOPERM",
          98: "EX_TOOBIG"}  # fmt: skip

SCORING = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS")
_MAX_LINE = 8192
_MAX_HEADERS = 64


class ProtocolError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class SpamdDoor(StreamDoor):
    """An asyncio server speaking spamd to spamc."""

    name = "spamd"
    line_limit = _MAX_LINE * 2

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        loop_time = asyncio.get_running_loop().time()
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) and peer else ""
        req = {"client": client, "method": "", "user": ""}
        try:
            if self.active > self.service.config.proxy.max_sessions:
                self._refused(req, EX_TEMPFAIL, "too many connections", loop_time)
                await self._answer(writer, EX_TEMPFAIL, "too many connections, try again later")
                return
            try:
                timeout = self.service.config.serve.request_timeout
                method, version, headers, body = await asyncio.wait_for(self._read(reader, req), timeout)
                await self._handle(writer, method, version, headers, body, req, loop_time)
            except ProtocolError as exc:
                self.service.metrics.error("bad_request")
                self._refused(req, exc.code, str(exc), loop_time)
                await self._answer(writer, exc.code, str(exc))
            except TimeoutError:
                self.service.metrics.error("bad_request")
                self._refused(req, EX_PROTOCOL, "timed out reading the request", loop_time)
                await self._answer(writer, EX_PROTOCOL, "timed out reading the request")
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client went away; nothing to answer
            except Exception as exc:  # never let one request take the door down
                log.exception("spamd request failed")
                self.service.metrics.error("internal")
                await self._answer(writer, EX_SOFTWARE, f"internal error ({type(exc).__name__})")
        finally:
            self.active -= 1
            try:
                # spamc reads the answer to its end: send FIN now, even if a scoring
                # worker forked meanwhile holds a copy of this socket
                if writer.can_write_eof():
                    writer.write_eof()
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    def _refused(self, req: dict, code: int, reason: str, started: float, event: str = "refused") -> None:
        """The one line for a request refused (or failed: ``event="error"``)."""
        ms = (asyncio.get_running_loop().time() - started) * 1000
        doorlog.request(log, logging.WARNING, "spamd", event, **req, code=_NAMES.get(code, str(code)),
                        error=" ".join(reason.split())[:200], ms=round(ms, 1))  # fmt: skip

    async def _read(self, reader: asyncio.StreamReader, req: dict) -> tuple[str, str, dict[str, str], bytes]:
        line = await _line(reader)
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("SPAMC/"):
            raise ProtocolError(EX_PROTOCOL, "bad request line")
        method, version = parts[0].upper(), parts[1][6:]
        req["method"] = method[:20]
        headers: dict[str, str] = {}
        for n in range(_MAX_HEADERS + 1):
            line = await _line(reader)
            if not line:
                break
            if n == _MAX_HEADERS:
                raise ProtocolError(EX_PROTOCOL, "too many header lines")
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(EX_PROTOCOL, "bad header line")
            # blanks only: str.strip() would also take a trailing \xa0 or \x85, the last
            # byte of a UTF-8 "à" or "Å" in a User header read as latin-1
            headers[name.strip().lower()] = value.strip(" \t")
        req["user"] = headers.get("user", "").encode("latin-1").decode("utf-8", "replace")[:64]
        if method in ("PING", "SKIP"):
            return method, version, headers, b""
        limit = self.service.config.proxy.max_message_size
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError(EX_PROTOCOL, "bad Content-length") from None
            if length < 0:
                raise ProtocolError(EX_PROTOCOL, "bad Content-length")
            if length > limit:
                raise ProtocolError(EX_TOOBIG, f"message over {limit} bytes")
            try:
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                raise ProtocolError(EX_PROTOCOL, "message shorter than its Content-length") from None
        else:  # old clients: the message runs to the end of the stream
            body = await reader.read(limit + 1)
            if len(body) > limit:
                raise ProtocolError(EX_TOOBIG, f"message over {limit} bytes")
        compress = headers.get("compress", "").lower()
        if compress:
            if compress != "zlib":
                raise ProtocolError(EX_PROTOCOL, f"unsupported compression {compress[:20]}")
            body = _inflate(body, limit)
        return method, version, headers, body

    async def _handle(
        self, writer, method: str, version: str, headers: dict[str, str], body: bytes, req: dict, started
    ) -> None:
        if method == "SKIP":
            return
        if method == "PING":
            writer.write(b"SPAMD/1.5 0 PONG\r\n")
            await writer.drain()
            return
        if method == "TELL":
            await self._tell(writer, headers, body, req, started)
            return
        if method not in SCORING:
            raise ProtocolError(EX_PROTOCOL, f"unknown method {method[:20]}")
        user = _user(headers) if _per_user(self.service.config) else None
        try:
            verdict = await self.service.score(body, door="spamd", user=user)
        except Exception as exc:
            self._refused(req, EX_TEMPFAIL, f"scoring failed ({type(exc).__name__}: {exc}): the client "
                          "passes the message unscanned", started, event="error")  # fmt: skip
            await self._answer(writer, EX_TEMPFAIL, "scoring failed, try again later")
            return
        ms = (asyncio.get_running_loop().time() - started) * 1000
        doorlog.request(log, logging.INFO, "spamd", "message", **req, size=len(body),
                        **doorlog.verdict_fields(verdict), outcome="answered", ms=round(ms, 1))  # fmt: skip
        extra: list[tuple[str, str]] = [("Spam", _spam_value(verdict))]
        if method == "CHECK":
            await self._answer(writer, EX_OK, "EX_OK", extra)
            return
        if method == "SYMBOLS":
            out = ",".join(_symbols(verdict)).encode()
        elif method == "REPORT" or (method == "REPORT_IFSPAM" and verdict.is_spam):
            out = explain(verdict).replace("\n", "\r\n").encode() + b"\r\n"
        elif method == "REPORT_IFSPAM":
            out = b""
        else:
            out = add_headers_after_from_line(body, spam_headers(verdict))  # procmail's From_ stays first
            if method == "HEADERS":
                out = out[: _header_end(out)]
        await self._answer(writer, EX_OK, "EX_OK", extra, out)

    async def _tell(self, writer, headers: dict[str, str], body: bytes, req: dict, started: float) -> None:
        host = req["client"]
        if not is_loopback(host):
            # spamc has no credentials: beyond loopback anyone could teach the model
            # (spamd itself refuses TELL unless started --allow-tell); HTTP learns with a token
            self._refused(req, EX_NOPERM, "learning is accepted from loopback only", started)
            await self._answer(writer, EX_NOPERM, "TELL (learning) is accepted from loopback only")
            return
        cls = headers.get("message-class", "").lower()
        want_set = _places(headers.get("set", ""))
        want_remove = _places(headers.get("remove", ""))
        if not want_set and not want_remove:
            raise ProtocolError(EX_PROTOCOL, "TELL needs Set or Remove")
        if want_set & want_remove:
            raise ProtocolError(EX_PROTOCOL, "TELL cannot Set and Remove the same place")
        if want_set and cls not in ("spam", "ham"):
            raise ProtocolError(EX_PROTOCOL, "TELL Set needs Message-class: spam or ham")
        spam = None if cls not in ("spam", "ham") else cls == "spam"
        user = _user(headers, learning=True) if _per_user(self.service.config) else None
        extra: list[tuple[str, str]] = []
        try:
            # one model, ours: "local" is it; "remote" (Razor, Pyzor...) we do not have
            if "local" in want_set:
                outcome = await self.service.learn(body, spam, user=user)
                # queued (the shared store is down): accepted, applied when it is back, so
                # spamc says learned rather than "already learned"; the log says queued
                if outcome in ("learned", "relabelled", "queued"):
                    extra.append(("DidSet", "local"))
            elif "local" in want_remove:
                outcome = await self.service.learn(body, spam if want_set else None, forget=True, user=user)
                if outcome in ("unlearned", "forgotten", "queued"):
                    extra.append(("DidRemove", "local"))
            else:
                outcome = "nothing (remote only)"
        except LearnRefused as exc:
            self._refused(req, EX_UNAVAILABLE, f"learning refused: {exc}", started)
            await self._answer(writer, EX_UNAVAILABLE, f"learning refused: {exc}")
            return
        except NotMail as exc:
            self.service.metrics.error("bad_request")
            self._refused(req, EX_DATAERR, f"not a message: {exc}", started)
            await self._answer(writer, EX_DATAERR, f"not a message: {exc}")
            return
        ms = (asyncio.get_running_loop().time() - started) * 1000
        doorlog.request(log, logging.INFO, "spamd", "learn", **req, size=len(body), **{"class": cls or None},
                        op="set" if want_set else "remove", outcome=outcome, ms=round(ms, 1))  # fmt: skip
        await self._answer(writer, EX_OK, "EX_OK", extra, b"")

    async def _answer(self, writer, code: int, message: str, headers=(), body: bytes | None = None) -> None:
        text = " ".join(message.split())[:200]
        if code != EX_OK:
            text = f"{_NAMES.get(code, 'EX_SOFTWARE')} {text}"
        lines = [f"SPAMD/1.1 {code} {text}"] + [f"{k}: {v}" for k, v in headers]
        if body is not None:
            lines.append(f"Content-length: {len(body)}")
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii", "replace") + (body or b""))
            await writer.drain()
        except (ConnectionError, OSError):
            pass


async def _line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise ProtocolError(EX_PROTOCOL, "header line too long") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError(EX_PROTOCOL, "request cut short") from None
        raise
    if len(raw) > _MAX_LINE:
        raise ProtocolError(EX_PROTOCOL, "header line too long")
    return raw.decode("latin-1").rstrip("\r\n")


def _inflate(body: bytes, limit: int) -> bytes:
    """zlib-inflate at most ``limit`` bytes: a small bomb must not fill memory."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(EX_DATAERR, f"bad zlib data ({exc})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ProtocolError(EX_TOOBIG, f"message over {limit} bytes once inflated")
    return out


def _per_user(config) -> bool:
    """spamc always sends ``User`` (the Unix user running it: root, Debian-exim
    under an MTA), so the header picks a per-user model only where the admin
    configured a per-user store (``[store] url`` or ``path``); otherwise
    every request, learns included, is the site model's, as before users."""
    return bool(config.store.url or config.store.path)


def _user(headers: dict[str, str], learning: bool = False) -> str | None:
    """The ``User`` header (``spamc -u alice``): whose model scores or
    learns (None: the site's).  The header's bytes are read as UTF-8
    (``spamc -u jörg``).  A name that cannot be used (``usernames``: empty,
    control characters, too long, not UTF-8) is scored with the site model
    and logged: EX_NOUSER would make spamc pass the message on unscanned.
    A learn for such a name is refused (EX_NOUSER): teaching the site model
    instead would move everyone's scores."""
    if "user" not in headers:
        return None
    value = headers["user"]
    try:
        value = value.encode("latin-1").decode("utf-8")  # _line read the bytes as latin-1
        return user_name(value)
    except (UnicodeError, StoreError) as exc:
        why = "not UTF-8" if isinstance(exc, UnicodeError) else str(exc)
        if learning:
            raise ProtocolError(EX_NOUSER, f"User {value[:64]!r}: {why}") from None
        log.warning("spamd: User %r cannot name a user (%s): scored with the site model", value[:64], why)
        return None


def _places(value: str) -> set[str]:
    return {p.strip().lower() for p in value.split(",") if p.strip()}


def _spam_value(verdict: Verdict) -> str:
    return f"{'True' if verdict.is_spam else 'False'} ; {verdict.score:.1f} / {verdict.required:.1f}"


def _symbols(verdict: Verdict) -> list[str]:
    """The test names X-Spam-Status lists: the rules hit and the model's band."""
    status = dict(spam_headers(verdict))["X-Spam-Status"]
    return status.rpartition("tests=")[2].split(",")


def _header_end(raw: bytes) -> int:
    """Offset just past the blank line ending the header block."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
    return min(ends) if ends else len(raw)
