"""SMTP content filter for Postfix, on aiosmtpd.

The proxy mirrors each client transaction onto one connection to the next
hop, command by command: MAIL and every RCPT are forwarded as they arrive and
the next hop's answer is the client's answer, so a recipient the next hop
refuses is refused to Postfix too, and nothing is accepted that the next hop
has not accepted.  At the end of DATA the message is scored (in a worker
process, under a deadline), our headers are added, and it is sent on; the
client hears ``250`` only after the next hop said ``250``.  If the next hop
is down, slow or answers 4xx, the client hears ``451`` and Postfix keeps the
mail queued.  A 5xx from the next hop is passed back unchanged.

Mail only ever goes to the configured next hop: source routes, ``%`` and
``!`` routing in recipients are refused, there is no AUTH, and the listener
is on loopback unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiosmtplib
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from . import logs, smtpdata
from .config import Config, ConfigError, ProxyConfig, is_loopback, loopback_refusal, split_hostport
from .filter import Filter, resolve_model_path
from .model import LinearModel, ModelError
from .pool import (
    DnsCount,
    PoolBusy,
    PoolRetired,
    PoolStats,
    ScoringError,
    ScoringTimeout,
    StoreCount,
    WorkerDied,
    WorkerPool,
    add_store_counts,
)
from .report import add_headers, spam_headers
from .rules import Context
from .score import REJECT, Verdict
from .users import user_for_recipients

__all__ = [
    "ProxyServer",
    "Scorer",
    "ScoringError",
    "ScoringTimeout",
    "ListenError",
    "Stats",
    "WorkerDied",
]

log = logging.getLogger("mailsift.proxy")

_XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")


# -- scoring ----------------------------------------------------------------------
class Scorer:
    """Scores messages off the event loop, so one large message cannot hold
    up every other session: a supervised pool of processes (``workers`` > 0,
    0 = one per core; see :mod:`mailsift.pool`), or a thread for tests and
    tiny setups (``workers`` = -1).

    The model file is read once per (re)load, verified here in the parent,
    and the workers get those very bytes: a worker started later (to
    replace a dead one) cannot pick up a file swapped on disk since."""

    def __init__(self, config: Config, model_path: str | None, workers: int):
        self.workers = workers
        self.model_path = model_path
        self.stats = PoolStats()
        self.pool = self._start(config, background=False)

    def _start(self, config: Config, background: bool = True) -> WorkerPool | _ThreadScorer:
        path = resolve_model_path(config, self.model_path)
        mtime = _mtime(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"{path}: model file not found") from None
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model ({exc.strerror})") from None
        model = LinearModel.load(path, data=data)  # a bad model fails here, in the parent
        probe = Filter(config, model=model, model_path=str(path), from_file=True)
        p = config.proxy
        if self.workers < 0:
            pool: WorkerPool | _ThreadScorer = _ThreadScorer(probe, self.stats)
        else:
            pool = WorkerPool(
                self.workers or os.cpu_count() or 1,
                config,
                data,
                str(path),
                self.stats,
                start_method=p.start_method,
                log_format=p.log_format,
                background=background,
            )
        self.max_bytes = p.max_message_size
        self.model_file, self.model_mtime = path, mtime
        return pool

    def reload(self, config: Config) -> bool:
        """New workers with the model and config as they are now on disk.
        A model that does not load is refused and the running one kept;
        scorings in flight finish in the old pool."""
        old = self.pool
        try:
            self.pool = self._start(config)
        except Exception as exc:
            log.error("reload refused, keeping the current model: %s", exc)
            return False
        old.retire()
        log.debug("reloaded: model %s", self.model_file)  # mailsift.serve says what reloaded
        return True

    async def score(
        self, raw: bytes, deadline: float, context: Context | None = None, user: str | None = None
    ) -> Verdict:
        """The verdict for ``raw`` (the whole message, up to
        ``max_message_size``: DKIM needs all of it) within ``deadline``
        seconds of a worker taking it (waiting for one: up to ``deadline``
        more), with ``user``'s model and lists (None: the site's alone).
        Raises :class:`PoolBusy` (no worker free in time),
        :class:`ScoringTimeout` (a ``TimeoutError``), :class:`WorkerDied` or
        :class:`ScoringError`; the caller decides what the message gets."""
        loop = asyncio.get_running_loop()
        queue_end = loop.time() + deadline
        raw = raw[: self.max_bytes]
        while True:
            try:
                return await self.pool.run(
                    raw, context or Context(), deadline, max(queue_end - loop.time(), 0.0), user
                )
            except PoolRetired:  # a reload happened while the message waited: use the new pool
                continue

    def close(self) -> None:
        self.pool.close()


class _ThreadScorer:
    """``workers = -1``: one thread in this process (tests).  A message past
    its deadline cannot be taken back from a thread; it is only given up."""

    def __init__(self, scorer: Filter, stats: PoolStats):
        self.filter = scorer
        self.stats = stats
        self.dns = DnsCount(scorer)
        self.store = StoreCount(scorer)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mailsift-score")

    def _score(self, raw: bytes, context: Context, user: str | None = None) -> Verdict:
        try:
            return self.filter.score(raw, evidence=3, context=context, user=user)
        finally:
            hits, misses = self.dns.delta()
            self.stats.dns_hits += hits
            self.stats.dns_misses += misses
            add_store_counts(self.stats, self.store.delta())

    async def run(
        self,
        raw: bytes,
        context: Context,
        deadline: float,
        queue_wait: float | None = None,
        user: str | None = None,
    ) -> Verdict:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, self._score, raw, context, user)
        try:
            return await asyncio.wait_for(fut, deadline)
        except TimeoutError:
            raise ScoringTimeout(f"scoring took over {deadline:.3g} s") from None

    def retire(self) -> None:
        self.executor.shutdown(wait=False)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _mtime(path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


# -- the SMTP side ---------------------------------------------------------
@dataclass
class _Relay:
    """The session's connection to the next hop."""

    client: aiosmtplib.SMTP
    in_transaction: bool = False


@dataclass
class Stats:
    active_sessions: int = 0
    messages: int = 0
    relayed: int = 0
    tempfailed: int = 0
    rejected: int = 0
    discarded: int = 0
    #: messages that went on (or were tempfailed) unscanned
    scoring_errors: int = 0
    #: messages tempfailed because no scoring worker became free in time
    tempfailed_busy: int = 0
    #: connections to the next hop that failed (refused, timed out, dropped)
    relay_failures: int = 0
    by_action: dict[str, int] = field(default_factory=dict)
    #: the scoring pool's own counts: workers started, died, killed at the deadline
    pool: PoolStats = field(default_factory=PoolStats)


def _reply(code: int, message: str) -> str:
    text = " ".join(message.split()) or "no text"
    return f"{code} {text}"


#: messages at least this large get their headers added and are encoded in a thread
_INLINE_BYTES = 256 * 1024

#: DSN (RFC 3461) parameters, passed on when the next hop offers DSN
_DSN_MAIL = ("RET", "ENVID")
_DSN_RCPT = ("NOTIFY", "ORCPT")


class MessageScorer(Protocol):
    """What the SMTP door scores with: a :class:`Scorer` of its own, or the
    shared service's (``mailsift.serve.service``).  ``stats`` is the pool's."""

    stats: PoolStats

    async def score(
        self, raw: bytes, deadline: float, context: Context | None = None, user: str | None = None
    ) -> Verdict: ...


class FilterHandler:
    """aiosmtpd handler: mirrors the transaction to the next hop and scores
    at end of DATA.  ``on_error(kind)`` hears each failure the metrics count
    (``next_hop_down``); scoring failures are counted where scoring is."""

    def __init__(self, config: Config, scorer: MessageScorer, on_error: Callable[[str], None] | None = None):
        self.config = config
        self.proxy: ProxyConfig = config.proxy
        self.relay_host, self.relay_port = split_hostport(self.proxy.relay, "proxy.relay")
        self.scorer = scorer
        self.on_error = on_error
        self.stats = Stats(pool=scorer.stats)
        self.sessions: set[ProxySMTP] = set()

    # EHLO: advertise XFORWARD so Postfix tells us the real client, and DSN
    # when the next hop offers it; never AUTH (there is none)
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses):
        session.host_name = hostname
        # offered only to whom may use it (smtp_XFORWARD refuses the others)
        extra = ["250-XFORWARD " + " ".join(_XFORWARD_ATTRS)] if _xforward_allowed(session) else []
        session.mailsift_dsn = False  # type: ignore[attr-defined]
        try:
            relay = await self._relay(session)
        except (aiosmtplib.SMTPException, OSError) as exc:
            # EHLO still succeeds; MAIL then answers 451 with this reason
            session.mailsift_relay_down = self._relay_failed(session, exc, "EHLO")  # type: ignore[attr-defined]
        else:
            if relay.client.supports_extension("dsn"):
                session.mailsift_dsn = True  # type: ignore[attr-defined]
                extra.append("250-DSN")
        kept = [r for r in responses[:-1] if not r[4:].upper().startswith("AUTH")]
        return kept + extra + [responses[-1]]

    async def _relay(self, session: Session) -> _Relay:
        relay: _Relay | None = getattr(session, "mailsift_relay", None)
        if relay is not None and relay.client.is_connected:
            return relay
        client = aiosmtplib.SMTP(
            hostname=self.relay_host,
            port=self.relay_port,
            timeout=self.proxy.relay_timeout,
            start_tls=False,
            local_hostname="mailsift.localhost",
        )
        await client.connect()
        await client.ehlo()
        relay = _Relay(client)
        session.mailsift_relay = relay  # type: ignore[attr-defined]
        return relay

    def _relay_failed(self, session: Session, exc: BaseException, stage: str) -> str:
        """Count and log (one line) a failure of the next hop; the 451 text."""
        self.stats.relay_failures += 1
        if self.on_error is not None:
            self.on_error("next_hop_down")
        reason = type(exc).__name__
        detail = " ".join(str(exc).split())[:200]
        xf = getattr(session, "mailsift_xforward", {})
        self._log_event(
            logging.WARNING,
            "next_hop_down",
            f"next hop {self.proxy.relay} unavailable at {stage}: {reason}: {detail}",
            queue_id=xf.get("IDENT", ""),
            stage=stage,
            error=f"{reason}: {detail}",
        )
        return f"451 4.4.1 next hop unavailable ({reason}); try again later"

    async def close_relay(self, session: Session) -> None:
        relay: _Relay | None = getattr(session, "mailsift_relay", None)
        session.mailsift_relay = None  # type: ignore[attr-defined]
        if relay is not None and relay.client.is_connected:
            try:
                await relay.client.quit(timeout=5)
            except Exception:
                relay.client.close()

    async def handle_MAIL(self, server, session, envelope, address: str, mail_options: list[str]):
        down = getattr(session, "mailsift_relay_down", "")
        if down:  # the next hop refused us at EHLO: answer at once (logged then), retry on the next MAIL
            session.mailsift_relay_down = ""
            return down
        try:
            relay = await self._relay(session)
            if relay.in_transaction:
                await relay.client.rset()
            opts = self._mail_options(relay, mail_options)
            if relay.client.supports_extension("dsn"):
                opts += getattr(session, "mailsift_mail_dsn", [])
            xforward = getattr(session, "mailsift_xforward", {})
            if xforward and relay.client.supports_extension("xforward"):
                # the reply does not matter: a next hop that will not take it still takes the mail
                await relay.client.execute_command(
                    b"XFORWARD", *[f"{k}={v}".encode("ascii", "replace") for k, v in xforward.items()]
                )
            reverse_path = "" if address == NULL_SENDER else address
            resp = await relay.client.execute_command(
                b"MAIL", f"FROM:<{reverse_path}>".encode(), *[o.encode() for o in opts]
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close_relay(session)
            return self._relay_failed(session, exc, "MAIL")
        if resp.code != 250:
            return _reply(resp.code, resp.message)
        relay.in_transaction = True
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    def _mail_options(self, relay: _Relay, mail_options: list[str]) -> list[str]:
        """Pass SIZE, BODY and SMTPUTF8 on where the next hop supports them."""
        out = []
        for opt in mail_options:
            key = opt.split("=", 1)[0].upper()
            if key == "SIZE" and relay.client.supports_extension("size"):
                out.append(opt)
            elif key == "BODY" and relay.client.supports_extension("8bitmime"):
                out.append(opt)
            elif key == "SMTPUTF8" and relay.client.supports_extension("smtputf8"):
                out.append(opt)
        return out

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options: list[str]):
        if address == NULL_SENDER:
            return "501 5.1.3 a recipient cannot be empty"
        if _is_routing(address):
            return "553 5.7.1 source routes and %/! routing are not accepted"
        relay: _Relay | None = getattr(session, "mailsift_relay", None)
        if relay is None or not relay.in_transaction:
            return "503 5.5.1 need MAIL first"
        dsn = getattr(session, "mailsift_rcpt_dsn", [])
        opts = [o.encode() for o in dsn] if relay.client.supports_extension("dsn") else []
        try:
            resp = await relay.client.execute_command(b"RCPT", f"TO:<{address}>".encode(), *opts)
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close_relay(session)
            return self._relay_failed(session, exc, "RCPT")
        if resp.code not in (250, 251):
            return _reply(resp.code, resp.message)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options + dsn)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server, session, envelope):
        relay: _Relay | None = getattr(session, "mailsift_relay", None)
        if relay is not None and relay.in_transaction:
            try:
                await relay.client.rset()
                relay.in_transaction = False
            except (aiosmtplib.SMTPException, OSError):
                await self.close_relay(session)
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server, session, envelope):
        await self.close_relay(session)
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server, session, envelope):
        start = time.perf_counter()
        raw: bytes = envelope.original_content or b""
        self.stats.messages += 1
        verdict: Verdict | None = None
        error = ""
        try:
            verdict = await self.scorer.score(
                raw,
                self.proxy.scoring_deadline,
                self._context(session, envelope),
                # one recipient: theirs ([users] naming), else the site's
                user_for_recipients(envelope.rcpt_tos, self.config.users),
            )
        except PoolBusy as exc:  # every worker busy: the MTA keeps the message and retries
            self.stats.tempfailed_busy += 1
            return await self._finish(
                session,
                envelope,
                start,
                None,
                "451 4.3.2 all spam scanners busy; try again later",
                "tempfail",
                error=str(exc),
            )
        except TimeoutError as exc:  # ScoringTimeout: the pool has killed and replaced the worker
            error = str(exc) or f"scoring took over {self.proxy.scoring_deadline:g} s"
        except Exception as exc:  # a broken worker must not lose the message
            error = f"scoring failed: {type(exc).__name__}: {exc}"
        if error:
            self.stats.scoring_errors += 1
            if self.proxy.on_scoring_error == "tempfail":
                return await self._finish(
                    session,
                    envelope,
                    start,
                    None,
                    "451 4.3.0 spam scoring failed; try again later",
                    "tempfail",
                    error=error,
                )
        action = verdict.action if verdict else "unknown"
        if verdict is not None and action == REJECT:
            if self.proxy.mode == "before-queue" or self.proxy.reject:
                return await self._finish(
                    session,
                    envelope,
                    start,
                    verdict,
                    f"550 5.7.1 message rejected as spam (score {verdict.score:.1f})",
                    "reject",
                )
            if self.proxy.discard:
                return await self._finish(
                    session, envelope, start, verdict, "250 2.7.0 OK (discarded)", "discard"
                )
        headers = spam_headers(verdict)
        if len(raw) < _INLINE_BYTES:
            payload = smtpdata.encode(add_headers(raw, headers))
        else:  # C-level passes over the whole message: in a thread, so other sessions go on
            payload = await asyncio.to_thread(lambda: smtpdata.encode(add_headers(raw, headers)))
        relay: _Relay | None = getattr(session, "mailsift_relay", None)
        if relay is None or not relay.in_transaction:  # the next hop went away since RCPT
            return await self._finish(
                session,
                envelope,
                start,
                verdict,
                "451 4.4.1 lost the next hop; try again later",
                "tempfail",
                error=error or "next hop connection lost before DATA",
            )
        try:
            # RFC 5321 4.5.3.2: up to 10 minutes for the reply to the final dot
            resp = await smtpdata.send(relay.client, payload, self.proxy.data_timeout)
            reply = f"250 2.0.0 OK: relayed {resp.message}".strip()
            outcome = "relay"
        except aiosmtplib.SMTPResponseException as exc:
            reply, outcome = self._data_refused(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close_relay(session)
            reply, outcome = self._relay_failed(session, exc, "DATA"), "tempfail"
        relay.in_transaction = False
        return await self._finish(
            session, envelope, start, verdict, reply, outcome, relayed=outcome == "relay", error=error
        )

    def _context(self, session: Session, envelope: Envelope) -> Context:
        """The real client: Postfix's XFORWARD if it sent it (our peer is then
        Postfix itself), else nothing, and the rules fall back to Received.
        XFORWARD's SOURCE says whether Postfix got the mail from outside
        (REMOTE) or from its own users (LOCAL: sendmail, submission)."""
        xf = getattr(session, "mailsift_xforward", {})
        mail_from = "" if envelope.mail_from == NULL_SENDER else envelope.mail_from or ""
        return Context(
            client_ip=xf.get("ADDR", "").removeprefix("IPV6:"),
            helo=xf.get("HELO", ""),
            mail_from=mail_from,
            source=xf.get("SOURCE", "").upper(),
        )

    def _data_refused(self, code: int, message: str) -> tuple[str, str]:
        if 500 <= code < 600:
            return _reply(code, message), "refused"
        return f"451 4.4.0 next hop said: {_reply(code, message)}", "tempfail"

    async def _finish(
        self, session, envelope, start, verdict, reply, outcome, relayed=False, error=""
    ) -> str:
        relay: _Relay | None = getattr(session, "mailsift_relay", None)
        if not relayed and relay is not None and relay.in_transaction:
            try:  # the message is not going on: end the next hop's transaction
                await relay.client.rset()
            except (aiosmtplib.SMTPException, OSError):
                await self.close_relay(session)
            relay.in_transaction = False
        self.stats.relayed += outcome == "relay"
        self.stats.tempfailed += outcome == "tempfail"
        self.stats.rejected += outcome in ("reject", "refused")
        self.stats.discarded += outcome == "discard"
        action = verdict.action if verdict else "unknown"
        self.stats.by_action[action] = self.stats.by_action.get(action, 0) + 1
        self._log(session, envelope, verdict, outcome, reply, time.perf_counter() - start, error)
        return reply

    def _log(self, session, envelope, verdict, outcome, reply, seconds, error="") -> None:
        """The one line per message."""
        xf = getattr(session, "mailsift_xforward", {})
        record: dict[str, Any] = {
            "event": "message",
            "queue_id": xf.get("IDENT", ""),
            "client": xf.get("ADDR") or (session.peer[0] if session.peer else ""),
            "helo": xf.get("HELO") or session.host_name or "",
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "size": len(envelope.original_content or b""),
            "score": round(verdict.score, 2) if verdict else None,
            "action": verdict.action if verdict else "unknown",
            "outcome": outcome,
            "reply": reply[:120],
            "hits": [h.name for h in verdict.hits] if verdict else [],
            "ms": round(seconds * 1000, 1),
        }
        if error:
            record["error"] = error[:300]
        level = logging.WARNING if error else logging.INFO
        if self.proxy.log_format == "json":
            log.log(level, "%s", json.dumps(record), extra={"mailsift": record})
            return
        log.log(
            level,
            "%s client=%s from=<%s> to=%s size=%d score=%s action=%s outcome=%s ms=%.1f reply=%r%s",
            record["queue_id"] or "-", record["client"], record["from"], ",".join(record["to"]),
            record["size"], record["score"], record["action"], outcome, record["ms"], record["reply"],
            f" error={error[:300]!r}" if error else "",
        )  # fmt: skip

    def _log_event(self, level: int, event: str, text: str, **fields: Any) -> None:
        """A failure line (not a message): text, or a JSON object."""
        record = {"event": event, "msg": text, **fields}
        log.log(level, "%s", text, extra={"mailsift": record})


def _is_routing(address: str) -> bool:
    """Source route (@a,@b:user@dom), bang path or percent hack."""
    local = address.rpartition("@")[0]
    return address.startswith("@") or ":" in local or "%" in local or "!" in local


def _not_utf8(text: str) -> bool:
    """aiosmtpd decodes command arguments as UTF-8 with surrogateescape:
    a lone surrogate is a byte that was not UTF-8 (it cannot be encoded
    again, and no address may contain it)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _xforward_allowed(session: Session | None) -> bool:
    """XFORWARD is for the local MTA only (loopback peers)."""
    peer = session.peer[0] if session is not None and session.peer else ""
    return is_loopback(str(peer))


_XFORWARD_PROTOS = ("SMTP", "ESMTP")
_XFORWARD_SOURCES = ("LOCAL", "REMOTE")


def _xforward_value_ok(key: str, value: str) -> bool:
    """Postfix's XFORWARD attribute syntax: ADDR an IPv4/IPv6 address
    (``IPV6:`` prefix allowed), PORT a port number, PROTO SMTP/ESMTP,
    SOURCE LOCAL/REMOTE, the others printable ASCII without spaces."""
    if not value or not all(33 <= ord(c) < 127 for c in value):
        return False
    if key == "ADDR":
        try:
            ipaddress.ip_address(value[5:] if value.upper().startswith("IPV6:") else value)
        except ValueError:
            return False
        return True
    if key == "PORT":
        return value.isdigit() and int(value) <= 65535
    if key == "PROTO":
        return value.upper() in _XFORWARD_PROTOS
    if key == "SOURCE":
        return value.upper() in _XFORWARD_SOURCES
    return True


def _is_source_route(arg: str) -> bool:
    """``<@relay.example:user@example.org>`` (RFC 5321 4.1.1.3, deprecated):
    aiosmtpd would strip the route and accept the rest; we refuse it."""
    return arg.lstrip().lstrip("<").lstrip().startswith("@")


#: how the null reverse-path (MAIL FROM:<>, used by bounces) is carried
NULL_SENDER = "<>"


class LenientSMTP(SMTP):
    """aiosmtpd with two strictnesses a content filter cannot afford: it
    refuses ``MAIL FROM:<>`` as a malformed address, but bounces and delivery
    reports must pass; and it refuses lines over 1,000 bytes, which real mail
    has (the MTA in front already applied its own policy)."""

    line_length_limit = 64 * 1024

    def _getaddr(self, arg: str):
        stripped = arg.lstrip()
        if stripped.startswith("<>"):
            return NULL_SENDER, stripped[2:]
        return super()._getaddr(arg)


def _take_params(arg: str, keys: tuple[str, ...]) -> tuple[str, list[str]]:
    """Split the ``keys`` parameters off a MAIL/RCPT argument, keeping their
    case: aiosmtpd upper-cases parameters and refuses those it does not
    know, but ENVID and ORCPT are case-sensitive and must reach the next hop
    as sent."""
    parts = arg.split(" ")
    kept, taken = [parts[0]], []
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if key.upper() in keys and sep:
            taken.append(f"{key.upper()}={value}")
        else:
            kept.append(part)
    return " ".join(kept), taken


def _bad_dsn_param(param: str) -> bool:
    """RFC 3461 syntax, loosely: RET=FULL|HDRS, NOTIFY=NEVER or a list of
    SUCCESS/FAILURE/DELAY, ENVID/ORCPT printable ASCII of bounded length."""
    key, _, value = param.partition("=")
    if key == "RET":
        return value.upper() not in ("FULL", "HDRS")
    if key == "NOTIFY":
        items = value.upper().split(",")
        return not (items == ["NEVER"] or (items and set(items) <= {"SUCCESS", "FAILURE", "DELAY"}))
    if key == "ENVID":  # xtext
        return not value or len(value) > 100 or not all(33 <= ord(c) < 127 for c in value)
    # ORCPT: xtext, or UTF-8 with SMTPUTF8 (RFC 6533); never controls or spaces
    return not value or len(value) > 500 or not all(ord(c) > 32 and ord(c) != 127 for c in value)


class ProxySMTP(LenientSMTP):
    """aiosmtpd's SMTP plus XFORWARD, DSN parameters, the null sender and a
    session limit; no AUTH (502) and no source routes (553)."""

    def __init__(self, handler: FilterHandler, **kwargs):
        super().__init__(handler, **kwargs)
        self.filter_handler = handler
        self._counted = False
        #: DATA is being read, scored, relayed or answered
        self._in_data = False

    def connection_made(self, transport) -> None:
        stats = self.filter_handler.stats
        limit = self.filter_handler.proxy.max_sessions
        if stats.active_sessions >= limit:
            transport.write(b"421 4.3.2 too many connections, try again later\r\n")
            transport.close()
            peer = transport.get_extra_info("peername") or ("?",)
            self.filter_handler._log_event(
                logging.WARNING,
                "too_many_sessions",
                f"too many sessions (max_sessions={limit}): refused {peer[0]} with 421",
                client=str(peer[0]),
                max_sessions=limit,
            )
            return
        stats.active_sessions += 1
        self._counted = True
        self.filter_handler.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self.session is None:  # refused in connection_made: aiosmtpd never saw this connection
            return
        if self._counted:
            self.filter_handler.stats.active_sessions -= 1
            self._counted = False
        self.filter_handler.sessions.discard(self)
        if self.session is not None:
            relay = getattr(self.session, "mailsift_relay", None)
            if relay is not None:
                relay.client.close()
        super().connection_lost(exc)

    def idle(self) -> bool:
        """No transaction in flight: nothing is lost by closing now."""
        return not self._in_data and (self.envelope is None or self.envelope.mail_from is None)

    def close_idle(self) -> None:
        """Shutdown: an idle session (Postfix's cached connections) is told
        421 and closed at once instead of holding the shutdown."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"421 4.3.2 shutting down\r\n")
            self.transport.close()

    def abort(self) -> None:
        """Shutdown after the grace period: drop the connection (the MTA
        keeps the message queued, since it never heard 250)."""
        if self.transport is not None:
            self.transport.abort()

    async def smtp_AUTH(self, arg: str) -> None:
        """There is no AUTH: the only client is the local MTA."""
        await self.push("502 5.5.1 AUTH not supported")

    async def _take_dsn(self, arg: str | None, allowed) -> tuple[str | None, list[str] | None]:
        """Take the DSN parameters (RFC 3461) off a MAIL/RCPT argument when
        the next hop offered DSN; ``None`` for the list means a bad one was
        refused with 501 and the command must stop there."""
        if not arg or not getattr(self.session, "mailsift_dsn", False):
            return arg, []
        arg, dsn = _take_params(arg, allowed)
        bad = next((p for p in dsn if _bad_dsn_param(p)), None)
        if bad is not None:
            await self.push(f"501 5.5.4 bad DSN parameter {bad[:60]}")
            return arg, None
        return arg, dsn

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg and _not_utf8(arg):
            await self.push("553 5.1.7 bad sender address syntax (not UTF-8)")
            return
        arg, dsn = await self._take_dsn(arg, _DSN_MAIL)
        if dsn is None:
            return
        self.session.mailsift_mail_dsn = dsn  # type: ignore[union-attr]
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg and _not_utf8(arg):
            await self.push("553 5.1.3 bad recipient address syntax (not UTF-8)")
            return
        if arg:
            rest = self._strip_command_keyword("TO:", arg)
            if rest is not None and _is_source_route(rest):
                await self.push("553 5.7.1 source routes and %/! routing are not accepted")
                return
        arg, dsn = await self._take_dsn(arg, _DSN_RCPT)
        if dsn is None:
            return
        self.session.mailsift_rcpt_dsn = dsn  # type: ignore[union-attr]
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, but the payload is read in chunks with C-level
        searches (:func:`mailsift.smtpdata.read`): aiosmtpd's per-line loop
        held the event loop for seconds on a 50 MB message."""
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._in_data = True  # until the reply is sent: a shutdown must not cut a relayed message's 250
        try:
            await self._data()
        finally:
            self._in_data = False

    async def _data(self) -> None:
        try:
            content = await smtpdata.read(self._reader, self.data_size_limit, self._reset_timeout)
        except smtpdata.DataTooBig:
            await self.push("552 5.3.4 message too big")
            self._set_post_data_state()
            return
        except ConnectionResetError:
            self._writer.close()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix's XFORWARD: the original client's name, address, HELO,
        queue id and source (LOCAL/REMOTE), for the rules and the log."""
        if not _xforward_allowed(self.session):
            # like Postfix's smtpd_authorized_xforward_hosts: only the local MTA may say who the client was
            await self.push("550 5.7.0 XFORWARD is only accepted from loopback")
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            # XFORWARD_README: not allowed in the middle of a mail transaction
            await self.push("503 5.5.1 XFORWARD is not allowed during a mail transaction")
            return
        if not arg:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value ...")
            return
        new: dict[str, str] = {}
        for item in arg.split():
            key, sep, value = item.partition("=")
            key = key.upper()
            if not sep or key not in _XFORWARD_ATTRS:
                await self.push(f"501 5.5.4 bad XFORWARD attribute {key[:40]}")
                return
            if value.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
                continue
            if _not_utf8(value) or not _xforward_value_ok(key, value):
                await self.push(f"501 5.5.4 bad XFORWARD {key} value")
                return
            new[key] = value[:255]
        attrs: dict[str, str] = getattr(self.session, "mailsift_xforward", {})
        attrs.update(new)  # all or nothing: a bad attribute changes none
        self.session.mailsift_xforward = attrs  # type: ignore[union-attr]
        await self.push("250 2.0.0 OK")


# -- running it --------------------------------------------------------------
class ListenError(Exception):
    """A door's listening socket could not be opened (address in use, no
    permission); told apart from other OSErrors, which are not about the
    listen address."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"cannot listen on {address} ({reason})")
        self.address = address
        self.reason = reason


def _same_endpoint(listen: str, relay: str) -> bool:
    """Would connecting to ``relay`` reach our own listener?  Same port, and
    the same address (``localhost`` is 127.0.0.1) or a wildcard listener."""
    lhost, lport = split_hostport(listen, "proxy.listen")
    rhost, rport = split_hostport(relay, "proxy.relay")
    if lport != rport:
        return False

    def addr(host: str):
        try:
            return ipaddress.ip_address("127.0.0.1" if host == "localhost" else host.strip("[]"))
        except ValueError:
            return host.lower()

    la, ra = addr(lhost), addr(rhost)
    if isinstance(la, ipaddress.IPv4Address | ipaddress.IPv6Address) and la.is_unspecified:
        return True
    return la == ra


class ProxyServer:
    """Listener + handler (+ scorer); start(), then stop() drains sessions.

    ``scorer``: score with this one (the shared service's, see
    ``mailsift.serve``), which then is not closed here; else a
    :class:`Scorer` of its own (``model_path``, ``workers``), closed by
    :meth:`stop`.  Running it until SIGTERM, reloads and the stop line are
    ``mailsift.serve.run``'s."""

    def __init__(
        self,
        config: Config,
        model_path: str | None = None,
        workers: int | None = None,
        scorer: MessageScorer | None = None,
        on_error: Callable[[str], None] | None = None,
    ):
        self.config = config
        p = config.proxy
        self.host, self.port = split_hostport(p.listen, "proxy.listen")
        if not p.allow_non_loopback and not is_loopback(self.host):
            raise ConfigError(loopback_refusal("proxy.listen", p.listen))
        if _same_endpoint(p.listen, p.relay):
            raise ConfigError(
                f"proxy.relay {p.relay} is the proxy's own listen address {p.listen}: every message "
                "would loop back into mailsift. Relay to the MTA's re-injection port (Postfix: "
                "127.0.0.1:10026 in master.cf)"
            )
        logs.quiet_aiosmtpd()
        self.owns_scorer = scorer is None
        if scorer is None:
            scorer = Scorer(config, model_path, p.workers if workers is None else workers)
        self.scorer = scorer
        self.handler = FilterHandler(config, scorer, on_error)
        self.server: asyncio.base_events.Server | None = None

    def _factory(self) -> ProxySMTP:
        p = self.config.proxy
        return ProxySMTP(
            self.handler,
            data_size_limit=p.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname="mailsift",
            ident="mailsift content filter",
            timeout=p.command_timeout,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._factory, host=self.host, port=self.port)
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        if not is_loopback(self.host):
            log.warning("listening on %s, not on loopback (allow_non_loopback is set)", self.host)
        log.info("listening on %s:%d, relaying to %s (%s)", self.host, self.port, self.config.proxy.relay,
                 self.config.proxy.mode)  # fmt: skip

    def reconfigure(self, config: Config) -> None:
        """A reloaded config for sessions from now on (thresholds, timeouts,
        mode, ...); the listen and relay addresses and the loopback switch
        are read only at start."""
        proxy = replace(
            config.proxy,
            listen=self.config.proxy.listen,
            relay=self.config.proxy.relay,
            allow_non_loopback=self.config.proxy.allow_non_loopback,
        )
        self.config = replace(config, proxy=proxy)
        self.handler.config, self.handler.proxy = self.config, proxy

    def close(self) -> None:
        """Stop accepting: from here on a new connection is refused."""
        if self.server is not None:
            self.server.close()

    async def stop(self, grace: float | None = None) -> None:
        """Close the listening socket at once (new connections are refused
        from here on), tell idle sessions ``421`` and close them (at once,
        and each session in flight as soon as its transaction ends), let
        transactions in flight finish for up to ``grace`` seconds (default:
        ``relay_timeout``, the time a next hop is allowed per command), drop
        what is left (unacknowledged, so the MTA keeps
        it), then stop the scorer if it is our own."""
        grace = self.config.proxy.relay_timeout if grace is None else grace
        if self.server is not None:
            self.server.close()
            deadline = time.monotonic() + grace
            while self.handler.sessions and time.monotonic() < deadline:
                for session in list(self.handler.sessions):
                    if session.idle():  # idle, or its transaction just ended
                        session.close_idle()
                await asyncio.sleep(0.05)
            left = list(self.handler.sessions)
            if left:
                log.warning(
                    "%d session(s) still open after %g s: dropped (the MTA retries)", len(left), grace
                )
            for session in left:
                session.abort()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 5)
            except TimeoutError:
                pass
        if self.owns_scorer:
            self.scorer.close()

    def summary(self) -> str:
        """The SMTP door's part of the stop line."""
        st = self.handler.stats
        return (
            f"{st.messages} messages, {st.relayed} relayed, {st.tempfailed} tempfailed, "
            f"{st.scoring_errors} unscanned; scoring workers: {st.pool.died} died, "
            f"{st.pool.timed_out} killed at the deadline; next hop failures: {st.relay_failures}"
        )
