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
import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from . import logs
from .config import Config, ConfigError, ProxyConfig, load_config, split_hostport, validate
from .filter import Filter, resolve_model_path
from .model import LinearModel, ModelError
from .pool import PoolRetired, PoolStats, ScoringError, ScoringTimeout, WorkerDied, WorkerPool
from .report import add_headers, spam_headers
from .rules import Context
from .score import REJECT, Verdict

__all__ = [
    "ProxyServer",
    "Scorer",
    "ScoringError",
    "ScoringTimeout",
    "Stats",
    "WorkerDied",
    "serve_forever",
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
        probe = Filter(config, model=model, model_path=str(path))
        p = config.proxy
        if self.workers < 0:
            pool: WorkerPool | _ThreadScorer = _ThreadScorer(probe)
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
        log.info("reloaded: model %s", self.model_file)
        return True

    async def score(
        self, raw: bytes, deadline: float, context: Context | None = None, user: str | None = None
    ) -> Verdict:
        """The verdict for ``raw`` (the whole message, up to
        ``max_message_size``: DKIM needs all of it) within ``deadline``
        seconds, with ``user``'s model and lists (None: the site's alone).
        Raises :class:`ScoringTimeout` (a ``TimeoutError``),
        :class:`WorkerDied` or :class:`ScoringError`; the caller decides
        what the message gets."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        raw = raw[: self.max_bytes]
        while True:
            try:
                return await self.pool.run(raw, context or Context(), max(end - loop.time(), 0.0), user)
            except PoolRetired:  # a reload happened while the message waited: use the new pool
                continue

    def close(self) -> None:
        self.pool.close()


class _ThreadScorer:
    """``workers = -1``: one thread in this process (tests).  A message past
    its deadline cannot be taken back from a thread; it is only given up."""

    def __init__(self, scorer: Filter):
        self.filter = scorer
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mailsift-score")

    async def run(self, raw: bytes, context: Context, deadline: float, user: str | None = None) -> Verdict:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            self.executor, lambda: self.filter.score(raw, evidence=3, context=context, user=user)
        )
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
    #: connections to the next hop that failed (refused, timed out, dropped)
    relay_failures: int = 0
    by_action: dict[str, int] = field(default_factory=dict)
    #: the scoring pool's own counts: workers started, died, killed at the deadline
    pool: PoolStats = field(default_factory=PoolStats)


def _reply(code: int, message: str) -> str:
    text = " ".join(message.split()) or "no text"
    return f"{code} {text}"


#: DSN (RFC 3461) parameters, passed on when the next hop offers DSN
_DSN_MAIL = ("RET", "ENVID")
_DSN_RCPT = ("NOTIFY", "ORCPT")


class FilterHandler:
    """aiosmtpd handler: mirrors the transaction to the next hop and scores
    at end of DATA."""

    def __init__(self, config: Config, scorer: Scorer):
        self.config = config
        self.proxy: ProxyConfig = config.proxy
        self.relay_host, self.relay_port = split_hostport(self.proxy.relay, "proxy.relay")
        self.scorer = scorer
        self.stats = Stats(pool=scorer.stats)
        self.sessions: set[ProxySMTP] = set()

    # EHLO: advertise XFORWARD so Postfix tells us the real client, and DSN
    # when the next hop offers it; never AUTH (there is none)
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses):
        session.host_name = hostname
        extra = ["250-XFORWARD " + " ".join(_XFORWARD_ATTRS)]
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
                raw, self.proxy.scoring_deadline, self._context(session, envelope)
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
        message = add_headers(raw, spam_headers(verdict))
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
            resp = await relay.client.data(message, timeout=self.proxy.data_timeout)
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

    def connection_made(self, transport) -> None:
        stats = self.filter_handler.stats
        if stats.active_sessions >= self.filter_handler.proxy.max_sessions:
            transport.write(b"421 4.3.2 too many connections, try again later\r\n")
            transport.close()
            return
        stats.active_sessions += 1
        self._counted = True
        self.filter_handler.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self._counted:
            self.filter_handler.stats.active_sessions -= 1
            self._counted = False
        self.filter_handler.sessions.discard(self)
        if self.session is not None:
            relay = getattr(self.session, "mailsift_relay", None)
            if relay is not None:
                relay.client.close()
        super().connection_lost(exc)

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
        arg, dsn = await self._take_dsn(arg, _DSN_MAIL)
        if dsn is None:
            return
        self.session.mailsift_mail_dsn = dsn  # type: ignore[union-attr]
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
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

    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix's XFORWARD: the original client's name, address, HELO,
        queue id and source (LOCAL/REMOTE), for the rules and the log."""
        peer = self.session.peer[0] if self.session and self.session.peer else ""
        if not (peer.startswith("127.") or peer == "::1"):
            # like Postfix's smtpd_authorized_xforward_hosts: only the local MTA may say who the client was
            await self.push("550 5.7.0 XFORWARD is only accepted from loopback")
            return
        if not arg:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value ...")
            return
        attrs: dict[str, str] = getattr(self.session, "mailsift_xforward", {})
        for item in arg.split():
            key, sep, value = item.partition("=")
            if not sep or key.upper() not in _XFORWARD_ATTRS:
                await self.push(f"501 5.5.4 bad XFORWARD attribute {key[:40]}")
                return
            if value.upper() not in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
                attrs[key.upper()] = value[:255]
        self.session.mailsift_xforward = attrs  # type: ignore[union-attr]
        await self.push("250 2.0.0 OK")


# -- running it --------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ProxyServer:
    """Listener + handler + scorer; start(), then stop() drains sessions."""

    def __init__(
        self,
        config: Config,
        model_path: str | None = None,
        workers: int | None = None,
        config_path: str | None = None,
        overrides: dict | None = None,
    ):
        self.config = config
        self.config_path = config_path
        self.overrides = overrides or {}  # command-line flags, kept over reloads
        self.config_mtime = _mtime(config_path) if config_path else 0.0
        p = config.proxy
        self.host, self.port = split_hostport(p.listen, "proxy.listen")
        if not p.allow_non_loopback and not is_loopback(self.host):
            raise ConfigError(
                f"proxy.listen {p.listen} is not a loopback address: anyone who can reach it could "
                f"send mail through {p.relay}. Listen on 127.0.0.1, or set [proxy] allow_non_loopback = "
                "true (--allow-non-loopback) if a firewall lets only your MTA reach it"
            )
        logs.quiet_aiosmtpd()
        n = p.workers if workers is None else workers
        self.scorer = Scorer(config, model_path, n)
        self.handler = FilterHandler(config, self.scorer)
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

    def reload(self) -> bool:
        """Re-read the config file (if there is one) and the model; sessions
        in flight are not touched.  Listen and relay addresses are read only
        at start."""
        config = self.config
        if self.config_path:
            try:
                config = load_config(self.config_path)
                validate(config)
            except ConfigError as exc:
                log.error("reload refused, keeping the current config: %s", exc)
                return False
            config.proxy = replace(
                config.proxy,
                **{
                    **self.overrides,
                    "listen": self.config.proxy.listen,
                    "relay": self.config.proxy.relay,
                    "allow_non_loopback": self.config.proxy.allow_non_loopback,
                },
            )
            self.config_mtime = _mtime(self.config_path)
        if not self.scorer.reload(config):
            return False
        self.config = config
        self.handler.config, self.handler.proxy = config, config.proxy
        return True

    def changed_on_disk(self) -> bool:
        model_changed = _mtime(self.scorer.model_file) != self.scorer.model_mtime
        config_changed = bool(self.config_path) and _mtime(self.config_path) != self.config_mtime
        return model_changed or config_changed

    async def stop(self, grace: float | None = None) -> None:
        """Close the listening socket at once (new connections are refused
        from here on), let sessions in flight finish for up to ``grace``
        seconds (default: ``relay_timeout``, the time a next hop is allowed
        per command), drop what is left (unacknowledged, so the MTA keeps
        it), then stop the scorer."""
        grace = self.config.proxy.relay_timeout if grace is None else grace
        if self.server is not None:
            self.server.close()
            deadline = time.monotonic() + grace
            while self.handler.sessions and time.monotonic() < deadline:
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
        self.scorer.close()


async def serve_forever(
    config: Config,
    model_path: str | None = None,
    config_path: str | None = None,
    overrides: dict | None = None,
    watch_every: float = 2.0,
) -> None:
    """Run until SIGTERM/SIGINT.  SIGHUP, or a model or config file that
    changed on disk, reloads them without dropping sessions."""
    logs.configure(config.proxy.log_format)
    server = ProxyServer(config, model_path, config_path=config_path, overrides=overrides)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), watch_every)
        except TimeoutError:
            if server.changed_on_disk():
                log.info("model or config changed on disk: reloading")
                if not server.reload():  # do not retry a bad file every tick
                    server.scorer.model_mtime = _mtime(server.scorer.model_file)
                    server.config_mtime = _mtime(config_path) if config_path else 0.0
    log.info("stopping: no new connections; finishing sessions in flight")
    await server.stop()
    st = server.handler.stats
    log.info(
        "stopped: %d messages, %d relayed, %d tempfailed, %d unscanned; scoring workers: %d died, "
        "%d killed at the deadline; next hop failures: %d",
        st.messages, st.relayed, st.tempfailed, st.scoring_errors, st.pool.died, st.pool.timed_out,
        st.relay_failures,
    )  # fmt: skip
