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
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from .config import Config, ConfigError, ProxyConfig, load_config, split_hostport, validate
from .filter import Filter
from .report import add_headers, spam_headers
from .rules import Context
from .score import REJECT, Verdict

log = logging.getLogger("mailsift.proxy")

_XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")

# -- scoring in worker processes ---------------------------------------------
_worker_filter: Filter | None = None


def _die_with_parent(parent: int) -> None:
    """A scoring worker must not outlive a filter that was killed (SIGKILL,
    OOM killer): ask Linux to send it SIGTERM when the parent dies, and
    leave at once if that already happened before the request took hold.
    The worker was forked with the filter's own signal handlers (graceful
    stop on SIGTERM, reload on SIGHUP), which mean nothing here: SIGTERM
    gets its default action back, and SIGHUP sent to the whole process
    group must not kill the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(0)


def _init_worker(config: Config, model_path: str | None, parent: int | None = None) -> None:
    global _worker_filter
    if parent is not None:
        _die_with_parent(parent)
    _worker_filter = Filter(config, model_path)


def _score_in_worker(raw: bytes, context: Context) -> Verdict:
    assert _worker_filter is not None, "worker not initialised"
    return _worker_filter.score(raw, evidence=3, context=context)


class Scorer:
    """Scores messages off the event loop, so one large message cannot hold
    up every other session: a pool of processes (``workers`` > 0, 0 = one per
    core), or a thread for tests and tiny setups (``workers`` = -1)."""

    def __init__(self, config: Config, model_path: str | None, workers: int):
        self.workers = workers
        self.model_path = model_path
        self.pool = self._start(config)

    def _start(self, config: Config) -> concurrent.futures.Executor:
        probe = Filter(config, self.model_path)  # a bad model fails here, in the parent
        self.model_file = probe.model_path
        self.model_mtime = _mtime(self.model_file)
        if self.workers < 0:
            _init_worker(config, self.model_path)
            return concurrent.futures.ThreadPoolExecutor(1)
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers or os.cpu_count() or 1,
            initializer=_init_worker,
            initargs=(config, self.model_path, os.getpid()),
        )

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
        old.shutdown(wait=False)
        log.info("reloaded: model %s", self.model_file)
        return True

    async def score(self, raw: bytes, deadline: float, context: Context | None = None) -> Verdict:
        loop = asyncio.get_running_loop()
        # the whole message: the parser cuts what it reads itself, but DKIM
        # signs (and is verified on) all of it, up to max_message_size
        fut = loop.run_in_executor(self.pool, _score_in_worker, raw, context or Context())
        return await asyncio.wait_for(fut, deadline)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


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
    scoring_errors: int = 0
    by_action: dict[str, int] = field(default_factory=dict)


def _reply(code: int, message: str) -> str:
    text = " ".join(message.split()) or "no text"
    return f"{code} {text}"


class FilterHandler:
    """aiosmtpd handler: mirrors the transaction to the next hop and scores
    at end of DATA."""

    def __init__(self, config: Config, scorer: Scorer):
        self.config = config
        self.proxy: ProxyConfig = config.proxy
        self.relay_host, self.relay_port = split_hostport(self.proxy.relay, "proxy.relay")
        self.scorer = scorer
        self.stats = Stats()

    # EHLO: advertise XFORWARD so Postfix tells us the real client
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-XFORWARD " + " ".join(_XFORWARD_ATTRS), responses[-1]]

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

    async def close_relay(self, session: Session) -> None:
        relay: _Relay | None = getattr(session, "mailsift_relay", None)
        session.mailsift_relay = None  # type: ignore[attr-defined]
        if relay is not None and relay.client.is_connected:
            try:
                await relay.client.quit(timeout=5)
            except Exception:
                relay.client.close()

    async def handle_MAIL(self, server, session, envelope, address: str, mail_options: list[str]):
        try:
            relay = await self._relay(session)
            if relay.in_transaction:
                await relay.client.rset()
            opts = self._mail_options(relay, mail_options)
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
            return f"451 4.4.1 next hop unavailable ({type(exc).__name__}); try again later"
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
        try:
            resp = await relay.client.execute_command(b"RCPT", f"TO:<{address}>".encode())
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close_relay(session)
            return f"451 4.4.1 next hop unavailable ({type(exc).__name__}); try again later"
        if resp.code not in (250, 251):
            return _reply(resp.code, resp.message)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
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
        except TimeoutError:
            error = f"scoring took over {self.proxy.scoring_deadline:g} s"
        except Exception as exc:  # a broken worker must not lose the message
            error = f"scoring failed: {type(exc).__name__}: {exc}"
        if error:
            self.stats.scoring_errors += 1
            log.warning("%s", error)
            if self.proxy.on_scoring_error == "tempfail":
                return await self._finish(
                    session,
                    envelope,
                    start,
                    None,
                    "451 4.3.0 spam scoring failed; try again later",
                    "tempfail",
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
                session, envelope, start, verdict, "451 4.4.1 lost the next hop; try again later", "tempfail"
            )
        try:
            resp = await relay.client.data(message)
            reply = f"250 2.0.0 OK: relayed {resp.message}".strip()
            outcome = "relay"
        except aiosmtplib.SMTPResponseException as exc:
            reply, outcome = self._data_refused(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close_relay(session)
            reply, outcome = (
                f"451 4.4.1 next hop unavailable ({type(exc).__name__}); try again later",
                "tempfail",
            )
        relay.in_transaction = False
        return await self._finish(
            session, envelope, start, verdict, reply, outcome, relayed=outcome == "relay"
        )

    def _context(self, session: Session, envelope: Envelope) -> Context:
        """The real client: Postfix's XFORWARD if it sent it (our peer is then
        Postfix itself), else nothing, and the rules fall back to Received."""
        xf = getattr(session, "mailsift_xforward", {})
        mail_from = "" if envelope.mail_from == NULL_SENDER else envelope.mail_from or ""
        return Context(
            client_ip=xf.get("ADDR", "").removeprefix("IPV6:"), helo=xf.get("HELO", ""), mail_from=mail_from
        )

    def _data_refused(self, code: int, message: str) -> tuple[str, str]:
        if 500 <= code < 600:
            return _reply(code, message), "refused"
        return f"451 4.4.0 next hop said: {_reply(code, message)}", "tempfail"

    async def _finish(self, session, envelope, start, verdict, reply, outcome, relayed=False) -> str:
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
        self._log(session, envelope, verdict, outcome, reply, time.perf_counter() - start)
        return reply

    def _log(self, session, envelope, verdict, outcome, reply, seconds) -> None:
        xf = getattr(session, "mailsift_xforward", {})
        record: dict[str, Any] = {
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
        if self.proxy.log_format == "json":
            log.info(json.dumps(record))
        else:
            log.info(
                "%s client=%s from=<%s> to=%s size=%d score=%s action=%s outcome=%s ms=%.1f reply=%r",
                record["queue_id"] or "-", record["client"], record["from"], ",".join(record["to"]),
                record["size"], record["score"], record["action"], outcome, record["ms"], record["reply"],
            )  # fmt: skip


def _is_routing(address: str) -> bool:
    """Source route (@a,@b:user@dom), bang path or percent hack."""
    local = address.rpartition("@")[0]
    return address.startswith("@") or ":" in local or "%" in local or "!" in local


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


class ProxySMTP(LenientSMTP):
    """aiosmtpd's SMTP plus XFORWARD, the null sender and a session limit."""

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
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self._counted:
            self.filter_handler.stats.active_sessions -= 1
            self._counted = False
        if self.session is not None:
            relay = getattr(self.session, "mailsift_relay", None)
            if relay is not None:
                relay.client.close()
        super().connection_lost(exc)

    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix's XFORWARD: the original client's name, address, HELO and
        queue id, for the rules and the log."""
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
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._factory, host=self.host, port=self.port)
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        if not (self.host.startswith("127.") or self.host in ("::1", "localhost")):
            log.warning("listening on %s, not on loopback: make sure only your MTA can reach it", self.host)
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
                **{**self.overrides, "listen": self.config.proxy.listen, "relay": self.config.proxy.relay},
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

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let sessions in flight finish (up to ``grace``
        seconds), then shut the scorer down."""
        if self.server is not None:
            self.server.close()
            deadline = time.monotonic() + grace
            while self.handler.stats.active_sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await self.server.wait_closed()
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
    log.info("stopping: finishing sessions in flight")
    await server.stop()
    log.info("stopped")
