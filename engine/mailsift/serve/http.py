"""The HTTP door: score and learn over HTTP/1.1, and Prometheus metrics.

==========================  =================================================
``POST /score``             body: the raw message; answer: the JSON of
                            ``mailsift score --json`` (Verdict.to_dict()).
                            Optional query: ``ip``, ``helo``, ``mail_from``,
                            ``user`` (whose model: the site's plus what
                            that user taught it; default the site's; a
                            name that cannot be used scores with the
                            site's, ``user_refused`` saying why).
``POST /learn?class=spam``  learn it (``class=spam|ham``); answer
                            ``{"outcome": "learned", "class": "spam"}``
``POST /unlearn``           take it back (``?class=`` optional); both take
                            ``?wait=0``: 202 ``queued`` once in the learner's
                            queue, without waiting for the model write
                            ``?user=`` (for that user only; 400 for a
                            name that cannot be used, or user given
                            twice). In a query ``+`` is a space:
                            ``alice+tag`` is ``alice%2Btag``.
``GET /metrics``            Prometheus text format
``GET /healthz``            ``{"status": "ok", ...}``
==========================  =================================================

A small server on asyncio streams rather than aiohttp: five routes, one
request per connection, bodies bounded by ``proxy.max_message_size`` (413
above), no chunked uploads (411), ``Expect: 100-continue`` answered once the
head is accepted; a framework would add a large dependency
to the lean daemon for none of its features.  Learn endpoints need
``Authorization: Bearer <serve.http_token>`` when the door listens beyond
loopback (and whenever a token is configured).  Every error is a JSON answer
with a status; nothing a client sends can take the door down.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from urllib.parse import parse_qs, urlsplit

from ..config import is_loopback
from ..rules import Context
from ..store import StoreError, user_name
from . import doorlog
from .door import StreamDoor
from .service import LearnRefused, NotMail

log = logging.getLogger("mailsift.http")

_MAX_LINE = 8192
_MAX_HEADERS = 100
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip
_ROUTES = {"/score": "POST", "/learn": "POST", "/unlearn": "POST", "/metrics": "GET", "/healthz": "GET"}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HttpDoor(StreamDoor):
    name = "http"
    line_limit = _MAX_LINE * 2

    @property
    def needs_token(self) -> bool:
        """Beyond loopback learning needs the token, and wherever one is set;
        read at each request, so a reload that sets or drops it applies."""
        return not is_loopback(self.host) or bool(self.service.config.serve.http_token)

    async def start(self) -> None:
        await super().start()
        if not is_loopback(self.host) and not self.service.config.serve.http_token:
            log.warning("HTTP door beyond loopback without serve.http_token: learning is refused (403)")

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        peer = writer.get_extra_info("peername")
        req: dict = {"client": peer[0] if isinstance(peer, tuple) and peer else "", "path": ""}
        error = ""
        try:
            try:
                if self.active > self.service.config.proxy.max_sessions:
                    raise HttpError(503, "too many connections, try again later")
                timeout = self.service.config.serve.request_timeout
                method, target, headers = await asyncio.wait_for(_read_head(reader), timeout)
                req["path"] = urlsplit(target).path[:60]
                status, ctype, body = await self._route(reader, writer, method, target, headers, timeout, req)
            except HttpError as exc:
                error = str(exc)
                # 5xx: scoring failed, and the service counted it; refused learns are not errors
                if exc.status < 500 and exc.status not in (401, 403, 404, 405):
                    self.service.metrics.error("bad_request")
                status, ctype, body = exc.status, "application/json", _json({"error": str(exc)})
            except TimeoutError:
                self.service.metrics.error("bad_request")
                error = "request timed out"
                status, ctype, body = 408, "application/json", _json({"error": error})
            except (ConnectionError, asyncio.IncompleteReadError):
                return  # the client went away
            except Exception as exc:
                log.exception("http request failed")
                self.service.metrics.error("internal")
                status, error = 500, f"internal error ({type(exc).__name__})"
                ctype, body = "application/json", _json({"error": f"internal error ({type(exc).__name__})"})
            if req["path"] in ("/score", "/learn", "/unlearn") or status == 401:
                self._log(req, status, error, loop.time() - started)
            await _respond(writer, status, ctype, body)
            # FIN now, even if a scoring worker forked meanwhile holds a copy of this socket
            if writer.can_write_eof():
                writer.write_eof()
            await _discard_rest(reader)
        finally:
            self.active -= 1
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    def _log(self, req: dict, status: int, error: str, seconds: float) -> None:
        """The one line per request that scores or learns (or is refused 401)."""
        fields = {k: v for k, v in req.items() if k != "verdict"}
        if "verdict" in req:
            fields.update(doorlog.verdict_fields(req["verdict"]))
        event = "message" if req["path"] == "/score" else "learn"
        if status >= 500:
            event = "error"
        elif status >= 400:
            event = "refused"
        fields.update(status=status, ms=round(seconds * 1000, 1))
        if error:
            fields["error"] = error[:200]
        doorlog.request(log, logging.INFO if status < 400 else logging.WARNING, "http", event, **fields)

    async def _route(self, reader, writer, method: str, target: str, headers: dict, timeout: float, req):
        url = urlsplit(target)
        path = url.path
        if path not in _ROUTES:
            raise HttpError(
                404, f"no such endpoint {path[:60]}; try /score, /learn, /unlearn, /metrics, /healthz"
            )
        if method != _ROUTES[path]:
            raise HttpError(405, f"{path} takes {_ROUTES[path]}")
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if path in ("/score", "/learn", "/unlearn"):
            given = _given_users(url.query)
            if given:  # logged as given (doorlog escapes it), refused or not, as spamd logs User
                req["user"] = ", ".join(
                    v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:64] for v in given
                )
        if path == "/metrics":
            return 200, self.service.metrics.content_type, self.service.metrics.render()
        if path == "/healthz":
            return 200, "application/json", _json({"status": "ok", "model": str(self.service.model_file)})
        if path in ("/learn", "/unlearn"):
            self._authorise(headers)  # before reading a body from someone who may not learn
        # before reading the body: a learn for a bad name is refused at once
        user, refused = _user(url.query, learning=path != "/score")
        body = await asyncio.wait_for(self._body(reader, writer, headers), timeout)
        req["size"] = len(body)
        if path == "/score":
            context = Context(
                client_ip=query.get("ip", ""),
                helo=query.get("helo", ""),
                mail_from=query.get("mail_from", ""),
            )
            try:
                verdict = await self.service.score(body, context, door="http", user=user)
            except TimeoutError:
                raise HttpError(503, "scoring took too long; try again") from None
            except Exception as exc:
                raise HttpError(503, f"scoring failed ({type(exc).__name__})") from None
            req["verdict"], req["outcome"] = verdict, "answered"
            doc = verdict.to_dict()
            if refused:
                doc["user_refused"] = refused
            return 200, "application/json", _json(doc)
        cls = query.get("class", "")
        if cls not in ("spam", "ham") and (path == "/learn" or cls):
            raise HttpError(400, "class must be spam or ham")
        spam = None if not cls else cls == "spam"
        req["class"] = cls or None
        try:
            wait = query.get("wait", "1") not in ("0", "no", "false")
            outcome = await self.service.learn(body, spam, forget=path == "/unlearn", wait=wait, user=user)
        except LearnRefused as exc:
            raise HttpError(403, f"learning refused: {exc}") from None
        except NotMail as exc:
            raise HttpError(400, f"not a message: {exc}") from None
        req["outcome"] = outcome
        doc = {"outcome": outcome, "class": cls or None}
        if user:
            doc["user"] = user
        if outcome == "queued":  # ?wait=0: accepted, applied in turn (logged then)
            return 202, "application/json", _json(doc)
        return 200, "application/json", _json(doc)

    def _authorise(self, headers: dict) -> None:
        if not self.needs_token:
            return
        token = self.service.config.serve.http_token
        if not token:
            raise HttpError(403, "learning over HTTP beyond loopback needs serve.http_token in the config")
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HttpError(401, "learning needs Authorization: Bearer <serve.http_token>")

    async def _body(self, reader, writer, headers: dict) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(411, "send a Content-Length (chunked uploads are not accepted)")
        if "content-length" not in headers:
            raise HttpError(411, "Content-Length required")
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0:
            raise HttpError(400, "bad Content-Length")
        limit = self.service.config.proxy.max_message_size
        if length > limit:
            raise HttpError(413, f"message over {limit} bytes (proxy.max_message_size)")
        if headers.get("expect", "").lower() == "100-continue" and length:
            # curl holds a body over 1 MiB back until this (or for a second)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise HttpError(400, "body shorter than its Content-Length") from None


def _user(query: str, learning: bool) -> tuple[str | None, str]:
    """``?user=alice``: whose model scores or learns (None: the site's), and
    why a given name was not used ("" if it was).  A name that cannot be
    used (``usernames``), or ``user`` given twice, is scored with the site
    model and logged, the answer saying so in ``user_refused``; a learn for
    it is a 400 (teaching the site model instead would move everyone's
    scores).  Bytes that are
    not UTF-8 stay undecodable (parse_qs would make every such name one
    U+FFFD name) and are refused as such."""
    values = _given_users(query)
    if not values:
        return None, ""
    value = values[-1]
    try:
        if len(values) > 1:  # which one was meant? never guess whose model learns
            raise StoreError(f"user given {len(values)} times; give one")
        return user_name(value), ""
    except StoreError as exc:
        if learning:
            raise HttpError(400, f"user: {exc}") from None
        log.warning(
            "http: user %r cannot name a user (%s): scored with the site model", ", ".join(values)[:64], exc
        )
        return None, str(exc)


def _given_users(query: str) -> list[str]:
    """Every ``user=`` value of the query, undecodable bytes kept as surrogates."""
    return parse_qs(query, keep_blank_values=True, errors="surrogateescape").get("user", [])


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    line = await _line(reader)
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = await _line(reader)
        if not line:
            return method.upper(), target, headers
            raise HttpError(431, "too many header fields")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "bad header field")
        headers[name.lower()] = value.strip()
    raise HttpError(431, "too many header fields")


async def _line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HttpError(431, "header line too long") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise HttpError(400, "request cut short") from None
        raise
    if len(raw) > _MAX_LINE:
        raise HttpError(431, "header line too long")
    return raw.decode("latin-1").rstrip("\r\n")


async def _discard_rest(reader: asyncio.StreamReader, most: int = 4 << 20) -> None:
    """Read what the client is still sending (the body of a refused request)
    before closing: closing with unread data resets the connection, and the
    client could lose our answer."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.0
    try:
        while most > 0 and not reader.at_eof() and loop.time() < until:
            chunk = await asyncio.wait_for(reader.read(65536), max(until - loop.time(), 0.01))
            if not chunk:
                return
            most -= len(chunk)
    except (TimeoutError, ConnectionError, OSError):
        pass


def _json(doc) -> bytes:
    return json.dumps(doc).encode() + b"\n"


async def _respond(writer, status: int, ctype: str, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        writer.write(head.encode() + body)
        await writer.drain()
    except (ConnectionError, OSError):
        pass
