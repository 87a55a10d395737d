"""One service behind every door: one scoring pool, one learner.

Every door (SMTP content filter, spamd, HTTP, milter) scores through
:meth:`Service.score` and learns through :meth:`Service.learn`.  Scoring runs
in the shared :class:`mailsift.proxy.Scorer` pool.  Learning goes through one
asyncio queue drained by one task, the only writer of the model file: clicks
arriving together are applied one after the other to one model in memory, the
file is written once per batch (atomically, by ``LinearModel.save``), and the
scoring pool is reloaded before any of them is answered, so a message scored
after its ``learn`` returned is scored by the model that learned it.  Two
``mailsift learn`` processes rewriting the file could each lose the other's
update; through the service they cannot.

:func:`run` is ``mailsift serve``: it opens the configured doors over one
service and handles SIGHUP (reload) and SIGTERM/SIGINT (stop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..config import DOORS, Config, ConfigError, is_loopback, load_config, split_hostport, validate
from ..filter import DEFAULT_MODEL
from ..model import LinearModel
from ..parse import parse
from ..proxy import FilterHandler, ProxyServer, Scorer
from ..rules import Context
from ..score import Verdict
from ..tokens import extract
from ..train import message_digest
from .metrics import Metrics

log = logging.getLogger("mailsift.serve")

#: what :meth:`Service.learn` answers
LEARNED, ALREADY, RELABELLED = "learned", "already-learned", "relabelled"
UNLEARNED, NOT_LEARNED, FORGOTTEN, OTHER_CLASS = "unlearned", "not-learned", "forgotten", "other-class"

#: clicks applied per model write at most (the rest wait for the next batch)
_MAX_BATCH = 256


class LearnRefused(Exception):
    """Learning is not possible with this model (the shipped default model,
    or a model file that cannot be written); the message names why."""


@dataclass
class _Job:
    raw: bytes
    spam: bool | None
    forget: bool
    future: asyncio.Future


class Service:
    """The scoring pool and the learner every door shares.

    ``workers``: scoring processes (None: config ``proxy.workers``; 0 one per
    core; -1 a thread, for tests).  Call :meth:`start` inside the event loop
    before learning, :meth:`close` at the end.
    """

    def __init__(self, config: Config, model_path: str | None = None, workers: int | None = None):
        self.config = config
        self.metrics = Metrics()
        n = config.proxy.workers if workers is None else workers
        self.scorer = Scorer(config, model_path, n)
        self.model_file = Path(self.scorer.model_file)
        #: a model named on purpose may be learned into even if it was trained --generic
        self.explicit_model = bool(model_path or config.model.path)
        self._model: LinearModel | None = None
        self._model_mtime = 0.0
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._show_model(LinearModel.load(self.model_file))

    # -- scoring -----------------------------------------------------------
    async def score(self, raw: bytes, context: Context | None = None, door: str = "") -> Verdict:
        """Score in the pool under ``proxy.scoring_deadline``; counted in the
        metrics under ``door``.  Raises TimeoutError or the worker's error:
        each door decides what a failure means for its mail."""
        return await self._score(raw, context, door, self.config.proxy.scoring_deadline)

    async def _score(self, raw: bytes, context: Context | None, door: str, deadline: float) -> Verdict:
        start = time.perf_counter()
        broken_pool = getattr(self.scorer, "pool", None)
        try:
            verdict = await self.scorer.score(raw, deadline, context)
        except TimeoutError:
            self.metrics.error("scoring_timeout")
            self.metrics.scored(door, None, time.perf_counter() - start)
            raise
        except Exception as exc:
            self.metrics.error("scoring_failed")
            self.metrics.scored(door, None, time.perf_counter() - start)
            if isinstance(exc, BrokenExecutor) and self.scorer.pool is broken_pool:
                # a worker was killed and the executor refuses all work from now on:
                # new workers, so only the messages in flight went unscanned
                log.error("a scoring worker died; starting new workers")
                self.scorer.reload(self.config)
            raise
        self.metrics.scored(door, verdict, time.perf_counter() - start)
        return verdict

    # -- learning ------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._learner(), name="mailsift-learner")

    async def learn(self, raw: bytes, spam: bool | None, forget: bool = False) -> str:
        """Learn ``raw`` as spam (True) or ham (False), or with ``forget``
        take an earlier learn back (``spam`` None: whichever class it was).
        Returns learned, already-learned, relabelled, unlearned, not-learned,
        forgotten (batch-trained: out of the ledger, its weight stays until
        the next train) or other-class (forget of a class it was not learned
        as; nothing changed).  Returns once the scoring pool uses the result.
        Raises LearnRefused when this model cannot learn."""
        if spam is None and not forget:
            raise ValueError("learning needs a class: spam=True or spam=False")
        await self.start()
        assert self._queue is not None
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(raw, spam, forget, future))
        return await future

    async def _learner(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            while not self._queue.empty() and len(jobs) < _MAX_BATCH:
                jobs.append(self._queue.get_nowait())
            try:
                outcomes, changed = await asyncio.to_thread(self._apply, jobs)
                # on the loop's thread: the watch for files changed on disk reloads there too
                if changed and not self.scorer.reload(self.config):
                    raise LearnRefused(
                        f"{self.model_file}: written, but the scoring pool could not reload it"
                    )
            except Exception as exc:
                if not isinstance(exc, LearnRefused):
                    log.exception("learning failed")
                for job in jobs:
                    self.metrics.learned(job.spam, "error")
                    if not job.future.done():
                        job.future.set_exception(exc)
                self.metrics.error("learn_failed")
                continue
            for job, outcome in zip(jobs, outcomes):
                self.metrics.learned(job.spam, outcome)
                if not job.future.done():
                    job.future.set_result(outcome)

    def _apply(self, jobs: list[_Job]) -> tuple[list[str], bool]:
        """Runs in a thread, one batch at a time: the learner's model is
        touched by nobody else."""
        model = self._learning_model()
        outcomes, changed = [], False
        try:
            for job in jobs:
                digest = message_digest(job.raw)
                entry = model.ledger.digests.get(digest)
                if job.forget and entry is None:
                    outcomes.append(NOT_LEARNED)
                    continue
                if job.forget and job.spam is not None and entry is not None and entry[0] != int(job.spam):
                    outcomes.append(OTHER_CLASS)
                    continue
                vec = extract(parse(job.raw), model.settings).vec
                if job.forget:
                    status, _ = model.unlearn_one(vec, digest)
                else:
                    status, _ = model.learn_one(vec, bool(job.spam), digest)
                changed |= status != ALREADY
                outcomes.append(status)
            if changed:
                model.save(self.model_file)
                self._model_mtime = _mtime(self.model_file)
                self._show_model(model)
        except OSError as exc:
            self._model = None  # what is in memory was not written: read the file again next time
            raise LearnRefused(f"{self.model_file}: cannot write the model ({exc.strerror})") from None
        except BaseException:
            self._model = None
            raise
        return outcomes, changed

    def _learning_model(self) -> LinearModel:
        """The model in memory, read again when the file changed under us
        (a ``mailsift train``, or a ``learn`` that wrote the file directly)."""
        if self.model_file.resolve() == DEFAULT_MODEL.resolve():
            raise LearnRefused(
                f"{self.model_file}: is the shipped default model; train your own with 'mailsift train' "
                "and serve it before learning single messages"
            )
        if self._model is None or _mtime(self.model_file) != self._model_mtime:
            self._model_mtime = _mtime(self.model_file)
            self._model = LinearModel.load(self.model_file)
        if self._model.info.get("generic") and not self.explicit_model:
            raise LearnRefused(
                f"{self.model_file}: was trained --generic (not on this user's mail); name it with "
                "--model or model.path to learn into it anyway"
            )
        return self._model

    def _show_model(self, model: LinearModel) -> None:
        self.metrics.set_model(str(self.model_file), model.trained_at, model.n_ham + model.n_spam)

    # -- the rest ------------------------------------------------------------
    def reload(self, config: Config | None = None) -> bool:
        """New scoring workers with ``config`` (default: the current one) and
        the model as it is on disk; a model that does not load is refused and
        the running one kept."""
        config = config or self.config
        if not self.scorer.reload(config):
            return False
        self.config = config
        try:
            self._show_model(LinearModel.load(self.model_file))
        except Exception as exc:  # the pool loaded it a moment ago; only the gauge is stale
            log.warning("model info not updated: %s", exc)
        return True

    async def close(self) -> None:
        """Stop the learner (clicks still queued are refused) and the pool."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(LearnRefused("the service is stopping"))
        await asyncio.to_thread(self.scorer.close)


def _mtime(path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


# -- doors -------------------------------------------------------------------
class Door(Protocol):
    """What :func:`run` needs of a door: constructed as ``Door(service, host,
    port)``; ``port`` is the bound port after :meth:`start` (port 0 = any)."""

    name: str
    port: int

    async def start(self) -> None: ...

    async def stop(self, grace: float = 30.0) -> None: ...


class _CountingHandler(FilterHandler):
    """proxy.FilterHandler scoring through the service (so SMTP mail is in
    the metrics) and counting the next hop being down."""

    def __init__(self, config: Config, service: Service):
        super().__init__(config, _DoorScorer(service, "smtp"))
        self.service = service

    def _count(self, reply: str) -> str:
        if reply.startswith("451 4.4."):  # proxy.py's replies when the next hop is down or failing
            self.service.metrics.error("next_hop_down")
        return reply

    # (*args: these are proxy.FilterHandler's, whatever their parameters become)
    async def handle_MAIL(self, *args, **kwargs):
        return self._count(await super().handle_MAIL(*args, **kwargs))

    async def handle_RCPT(self, *args, **kwargs):
        return self._count(await super().handle_RCPT(*args, **kwargs))

    async def _finish(self, *args, **kwargs) -> str:
        return self._count(await super()._finish(*args, **kwargs))


class _DoorScorer:
    """The ``scorer.score(raw, deadline, context)`` proxy.FilterHandler calls,
    answered by the shared service."""

    def __init__(self, service: Service, door: str):
        self.service, self.door = service, door

    async def score(self, raw: bytes, deadline: float, context: Context | None = None) -> Verdict:
        return await self.service._score(raw, context, self.door, deadline)


class SmtpDoor:
    """The SMTP content filter (proxy.ProxyServer) on the shared pool."""

    name = "smtp"

    def __init__(self, service: Service, host: str, port: int):
        self.service = service
        config = replace(service.config, proxy=replace(service.config.proxy, listen=f"[{host}]:{port}"))
        # ProxyServer makes a scorer of its own: the in-thread kind (workers=-1),
        # which starts no process; close it and share the service's pool
        self.server = ProxyServer(config, str(service.model_file), workers=-1)
        self.server.scorer.close()
        self.server.scorer = service.scorer
        self.server.handler = _CountingHandler(config, service)
        self.port = port

    async def start(self) -> None:
        await self.server.start()
        self.port = self.server.port

    def reconfigure(self, config: Config) -> None:
        """A reloaded config for sessions from now on; addresses stay."""
        h = self.server.handler
        proxy = replace(config.proxy, listen=h.proxy.listen, relay=h.proxy.relay)
        h.config, h.proxy = replace(config, proxy=proxy), proxy
        self.server.config = h.config

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let sessions finish; the pool is the service's."""
        listener = self.server.server
        if listener is None:
            return
        listener.close()
        deadline = time.monotonic() + grace
        while self.server.handler.stats.active_sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await listener.wait_closed()


def door_class(name: str) -> type:
    if name == "smtp":
        return SmtpDoor
    if name == "spamd":
        from .spamd import SpamdDoor

        return SpamdDoor
    if name == "http":
        from .http import HttpDoor

        return HttpDoor
    if name == "milter":
        try:
            from .milter import MilterDoor  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("serve.milter: the milter door is not part of this mailsift") from None
        return MilterDoor
    raise ConfigError(f"unknown door {name!r}")


def door_addresses(config: Config, named: dict[str, str | None] | None = None) -> dict[str, str]:
    """Door -> HOST:PORT for the doors that listen: the command line's
    (``named``), else [serve]'s.  With no door named anywhere, the SMTP door
    listens on [proxy] listen, as mailsift always did."""
    named = named or {}
    doors = {d: named.get(d) or getattr(config.serve, d) for d in DOORS}
    if not any(doors.values()):
        doors["smtp"] = config.proxy.listen
    out = {d: a for d, a in doors.items() if a}
    for door, address in out.items():
        host, _ = split_hostport(address, f"serve.{door}")
        if not is_loopback(host) and not config.serve.allow_public:
            raise ConfigError(
                f"serve.{door}: {address} is not a loopback address; set serve.allow_public = true "
                "(or --allow-public) if the network in front of it is yours"
            )
    return out


# -- running -----------------------------------------------------------------
async def run(
    config: Config,
    model_path: str | None = None,
    config_path: str | None = None,
    overrides: dict | None = None,
    named: dict[str, str | None] | None = None,
    workers: int | None = None,
    watch_every: float = 2.0,
) -> None:
    """``mailsift serve``: open the doors, serve until SIGTERM/SIGINT.
    SIGHUP, or the model or config file changing on disk, reloads both
    without dropping sessions (door addresses are read only at start).
    ``overrides``: [proxy] settings from the command line, kept over reloads."""
    addresses = door_addresses(config, named)
    service = Service(config, model_path, workers)
    await service.start()
    doors: list = []
    try:
        for name, address in addresses.items():
            host, port = split_hostport(address, f"serve.{name}")
            door = door_class(name)(service, host, port)
            await door.start()
            doors.append(door)
    except BaseException:
        for door in reversed(doors):
            await door.stop(grace=0)
        await service.close()
        raise

    config_mtime = _mtime(config_path) if config_path else 0.0

    def reload() -> None:
        nonlocal config_mtime
        new = service.config
        if config_path:
            try:
                new = load_config(config_path)
                validate(new)
            except ConfigError as exc:
                log.error("reload refused, keeping the current config: %s", exc)
                config_mtime = _mtime(config_path)  # do not retry a bad file every tick
                return
            new.proxy = replace(new.proxy, **(overrides or {}))
            new.serve = service.config.serve
            config_mtime = _mtime(config_path)
        if not service.reload(new):
            service.scorer.model_mtime = _mtime(service.scorer.model_file)
            return
        for door in doors:
            if hasattr(door, "reconfigure"):
                door.reconfigure(service.config)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("serving: %s", ", ".join(f"{n} on {d.port}" for n, d in zip(addresses, doors)))
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), watch_every)
        except TimeoutError:
            model_changed = _mtime(service.scorer.model_file) != service.scorer.model_mtime
            config_changed = bool(config_path) and _mtime(config_path) != config_mtime
            if model_changed or config_changed:
                log.info("model or config changed on disk: reloading")
                reload()
    log.info("stopping: finishing sessions in flight")
    for door in reversed(doors):
        await door.stop()
    await service.close()
    log.info("stopped")
