"""One service behind every door: one scoring pool, one learner.

Every door (SMTP content filter, milter, spamd, HTTP) scores through
:meth:`Service.score` and learns through :meth:`Service.learn`; none has a
pool or a model of its own.

- **Scoring** runs in one :class:`mailsift.proxy.Scorer`: the supervised pool
  of :mod:`mailsift.pool` (a dead worker is replaced and its message retried,
  a worker past the deadline is killed), reloaded in place.
- **Learning** goes through one asyncio queue drained by one task, the only
  writer of the model in this process.  Clicks arriving together are applied
  one after the other to one model in memory and the file is written once per
  batch, under the same ``flock`` (:func:`mailsift.model.model_lock`) that
  ``mailsift learn``/``unlearn``/``train`` take, so a CLI writing the file
  directly (``--model``) cannot interleave with us either; a file changed on
  disk meanwhile is read again before being changed.  The scoring pool is
  reloaded before any of the batch is answered: a message scored after its
  ``learn`` returned is scored by the model that learned it.
- **With a shared store** (``[store] url``) a site-level learn does not
  touch the model file: it is learned into the store under the reserved key
  ``store.SITE`` (``Filter.learn_site``), exactly as a user's learn is (one
  compare-and-set on the store's ledger, queued during an outage and
  replayed), and every node's workers read that delta at each message, so
  a click on any node is seen by all of them with no reload.

:func:`run` is ``mailsift serve``: it opens the doors over one service,
reloads on SIGHUP (or a model/config file changed on disk), and on
SIGTERM/SIGINT closes every listening socket at once, lets what is in flight
finish (``[proxy] relay_timeout``), and logs one stop line.

For a door (and for #12's per-user models) the contract is:

``await service.score(raw, context, door)``
    a :class:`~mailsift.score.Verdict`; raises :class:`TimeoutError`
    (``ScoringTimeout``) or the pool's ``WorkerDied``/``ScoringError``: the
    door decides what a failure means for its mail (tempfail, pass unscanned).
``await service.learn(raw, spam, forget=False)``
    an outcome string (:data:`LEARN_OUTCOMES`); raises :class:`LearnRefused`
    (this model cannot learn) or :class:`NotMail` (the bytes are not a message).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Protocol

from .. import logs
from ..config import (
    DOORS,
    Config,
    ConfigError,
    check_distinct,
    is_loopback,
    load_config,
    loopback_refusal,
    split_hostport,
    validate,
)
from ..corpus import mail_problem
from ..filter import DEFAULT_MODEL, Filter
from ..model import LinearModel, model_lock
from ..pool import PoolStats
from ..proxy import ListenError, ProxyServer, Scorer
from ..report import strip_verdict_headers
from ..rules import Context
from ..score import Verdict
from ..store import SITE, StoreError, StoreStatus, user_name
from ..tokens import extract_bytes
from ..train import message_digest
from ..users import Users
from .metrics import Metrics

log = logging.getLogger("mailsift.serve")

#: what :meth:`Service.learn` answers
LEARNED, ALREADY, RELABELLED = "learned", "already-learned", "relabelled"
UNLEARNED, NOT_LEARNED, FORGOTTEN, OTHER_CLASS = "unlearned", "not-learned", "forgotten", "other-class"
LEARN_OUTCOMES = (LEARNED, ALREADY, RELABELLED, UNLEARNED, NOT_LEARNED, FORGOTTEN, OTHER_CLASS)
#: what :meth:`Service.learn` answers with ``wait=False``: in the queue, applied in turn
QUEUED = "queued"


def _log_queued_outcome(future: asyncio.Future) -> None:
    """The outcome of a click nobody waits for (``learn(wait=False)``)."""
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        log.warning("queued learn failed: %s", exc)
    else:
        log.info("queued learn applied: %s", future.result())


#: clicks applied per model write at most (the rest wait for the next batch)
_MAX_BATCH = 256


class LearnRefused(Exception):
    """Learning is not possible with this model (the shipped default model,
    or a model file that cannot be written); the message names why."""


class NotMail(ValueError):
    """What was handed to :meth:`Service.learn` is not a message (empty,
    binary, no header block): nothing is learned from it."""


@dataclass
class _Job:
    raw: bytes
    spam: bool | None
    forget: bool
    future: asyncio.Future


class Service:
    """The scoring pool, the learner and the metrics every door shares.

    ``workers``: scoring processes (None: ``[proxy] workers``; 0 one per
    core; -1 a thread, for tests).  Construct and use it inside one event
    loop; :meth:`close` at the end.
    """

    def __init__(self, config: Config, model_path: str | None = None, workers: int | None = None):
        self.config = config
        n = config.proxy.workers if workers is None else workers
        self.scorer = Scorer(config, model_path, n)
        self.metrics = Metrics(self.scorer.stats)
        self.model_file = Path(self.scorer.model_file)
        #: a model named on purpose may be learned into even if it was trained --generic
        self.explicit_model = bool(model_path or config.model.path)
        self._model: LinearModel | None = None
        self._model_stamp: tuple = ()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._busy = False  # a batch is being applied
        model = LinearModel.load(self.model_file)
        self._show_model(model)
        log.info("model %s", self.describe_model(model))
        #: per-user learning: a Filter on the site model in this process (it never writes the
        #: model file); opened on the first user learn, or at start with a shared [store]
        self._users: Users | None = None
        self._user_filter: Filter | None = None
        self._user_stamp: tuple = ()
        #: verdicts scored with last known values (the workers' reads during an outage)
        self.stale_reads = 0
        #: site-level learns go to the shared store (not the model file)
        self.shared = bool(config.store.url)
        #: learns answered ``queued`` (wait=False) still running in a thread
        self._pending: set[asyncio.Task] = set()
        if self.shared:
            self._users = Users.open(config)
        self.metrics.watch_store(self.store_status)

    def describe_model(self, model: LinearModel | None = None) -> str:
        """``PATH (trained WHEN, N messages)``: which model the doors score with."""
        if model is None:
            try:
                model = LinearModel.load(self.model_file)
            except Exception as exc:  # the pool loaded it a moment ago; say so rather than fail
                return f"{self.model_file} (cannot read it again: {exc})"
        trained = model.trained_at or "unknown"
        return f"{self.model_file} (trained {trained}, {model.n_ham + model.n_spam} messages)"

    @property
    def stats(self) -> PoolStats:
        """The pool's own counts (workers started, died, killed; DNS cache)."""
        return self.scorer.stats

    # -- scoring -----------------------------------------------------------
    async def score(
        self,
        raw: bytes,
        context: Context | None = None,
        door: str = "",
        deadline: float | None = None,
        user: str | None = None,
    ) -> Verdict:
        """Score ``raw`` in the pool within ``deadline`` seconds (default
        ``[proxy] scoring_deadline``), counted in the metrics under ``door``,
        with ``user``'s model and lists (None: the site's; a name that
        cannot be used, ``usernames``, too, logged: never an unscanned
        message).  Raises TimeoutError or the pool's error, counted too."""
        deadline = self.config.proxy.scoring_deadline if deadline is None else deadline
        if user:
            try:
                user = user_name(user)
            except StoreError as exc:
                why = "%s: user %r cannot name a user (%s): scored with the site model"
                log.warning(why, door or "library", user[:64], exc)
                user = None
        else:
            user = None
        start = time.perf_counter()
        try:
            verdict = await self.scorer.score(raw, deadline, context, user)
        except TimeoutError:
            self.metrics.error("scoring_timeout")
            self.metrics.scored(door, None, time.perf_counter() - start)
            raise
        except Exception:
            self.metrics.error("scoring_failed")
            self.metrics.scored(door, None, time.perf_counter() - start)
            raise
        self.metrics.scored(door, verdict, time.perf_counter() - start)
        self.stale_reads += verdict.stale
        return verdict

    def store_status(self) -> StoreStatus | None:
        """The user store's counters for /metrics (None: no store open)."""
        if self._users is None:
            return None
        st = self._users.status()
        st.stale_reads += self.stale_reads
        pool = self.scorer.stats  # the scoring workers' own store clients
        st.errors += pool.store_errors
        st.outages += pool.store_outages
        # a worker found it down at its last message, and this process has had no answer since
        st.outage = st.outage or pool.store_down_at > st.answered_at
        return st

    def replay_queued(self) -> None:
        """Replay learns queued during a store outage, if the store answers
        again (the watch loop calls it, so they land without traffic).
        Never raises: a replay that fails is logged and tried again on the
        next round, and the service goes on scoring mail (a queue the
        service cannot replay must not take the spamd door down with it)."""
        if self._users is None:
            return
        if self._users.queue is not None and self._users.queue.waiting():
            try:
                self._users.replay()
            except Exception:
                log.exception("replaying queued learns failed; trying again at the next round")
        elif self.stats.store_down_at > self._users.store.status().answered_at:
            # the workers last found it down: ask, so /metrics clears once it is back, without mail
            try:
                self._users.store.ping()
            except StoreError:
                pass  # still down: the store logged it and counts it

    # -- learning ------------------------------------------------------------
    async def start(self) -> None:
        """Start the learner (done by the first :meth:`learn` too)."""
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._learner(), name="mailsift-learner")

    async def learn(
        self,
        raw: bytes,
        spam: bool | None,
        forget: bool = False,
        wait: bool = True,
        user: str | None = None,
    ) -> str:
        """Learn ``raw`` as spam (True) or ham (False), or with ``forget``
        take an earlier learn back (``spam`` None: whichever class it was).

        Returns learned, already-learned, relabelled, unlearned, not-learned,
        forgotten (batch-trained: out of the ledger, its weight stays until
        the next train) or other-class (forget of a class it was not learned
        as; nothing changed), once the scoring pool uses the result.  Filters'
        verdict headers are removed first (a message is the same message with
        or without them).  Raises NotMail or LearnRefused.

        ``wait=False`` answers ``queued`` as soon as the click is in the
        learner's queue (an IMAPSieve move need not wait for the model write);
        its outcome is logged when applied, and :meth:`close` applies every
        queued click before stopping, so none is lost.

        With ``user``: for that user only (``Filter.learn_user``, in a
        thread): the site model and every other user are unchanged, nothing
        is written to the model file and the pool is not reloaded (workers
        read the user's state from the store at each message); queued
        (the shared store is down) is one more outcome.  Raises StoreError
        for a name the store refuses.

        Without ``user`` and with a shared store (``[store] url``): for the
        site, in the store (``Filter.learn_site``), the same way; the model
        file is not written.  ``wait=False`` then answers ``queued`` at once
        and the learn runs on (:meth:`close` waits for it)."""
        if spam is None and not forget:
            raise ValueError("learning needs a class: spam=True or spam=False")
        problem = mail_problem(raw)
        if problem:
            raise NotMail(f"{problem}; nothing {'un' if forget else ''}learned")
        if user or self.shared:
            name = user_name(user) if user else SITE
            if wait:
                return await self._learn_in_store(raw, spam, name, forget)
            task = asyncio.create_task(self._learn_in_store(raw, spam, name, forget))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            task.add_done_callback(_log_queued_outcome)
            return QUEUED
        await self.start()
        assert self._queue is not None
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(strip_verdict_headers(raw), spam, forget, future))
        if not wait:
            future.add_done_callback(_log_queued_outcome)
            return QUEUED
        return await future

    async def _learner(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            while not self._queue.empty() and len(jobs) < _MAX_BATCH:
                jobs.append(self._queue.get_nowait())
            self._busy = True
            try:
                await self._batch(jobs)
            finally:
                self._busy = False

    async def _batch(self, jobs: list[_Job]) -> None:
        """One batch: applied, the pool reloaded, then every click answered."""
        try:
            outcomes, changed = await asyncio.to_thread(self._apply, jobs)
            # on the loop's thread: the watch for files changed on disk reloads there too
            if changed and not self.scorer.reload(self.config):
                raise LearnRefused(f"{self.model_file}: written, but the scoring pool cannot reload it")
        except Exception as exc:
            if not isinstance(exc, LearnRefused):
                log.exception("learning failed")
            for job in jobs:
                self.metrics.learned(job.spam, "error")
                if not job.future.done():
                    job.future.set_exception(exc)
            self.metrics.error("learn_failed")
            return
        for job, outcome in zip(jobs, outcomes):
            self.metrics.learned(job.spam, outcome)
            if not job.future.done():
                job.future.set_result(outcome)

    def _apply(self, jobs: list[_Job]) -> tuple[list[str], bool]:
        """One batch, in a thread (the learner's only), under the model's
        lock: the read-modify-write no other writer can interleave with."""
        self._refuse_default()
        try:
            with model_lock(self.model_file):
                return self._apply_locked(jobs)
        except OSError as exc:
            self._model = None  # what is in memory may not be on disk: read the file again next time
            raise LearnRefused(f"{self.model_file}: cannot write the model ({exc.strerror})") from None
        except BaseException:
            self._model = None
            raise

    def _apply_locked(self, jobs: list[_Job]) -> tuple[list[str], bool]:
        model = self._learning_model()
        outcomes, changed = [], False
        for job in jobs:
            digest = message_digest(job.raw)
            entry = model.ledger.digests.get(digest)
            if job.forget and entry is None:
                outcomes.append(NOT_LEARNED)
                continue
            if job.forget and job.spam is not None and entry is not None and entry[0] != int(job.spam):
                outcomes.append(OTHER_CLASS)
                continue
            # as `mailsift learn` reads it: no parse for a raw-byte model
            vec = extract_bytes(job.raw, model.settings).vec
            if job.forget:
                status, _ = model.unlearn_one(vec, digest)
            else:
                status, _ = model.learn_one(vec, bool(job.spam), digest)
            changed |= status != ALREADY
            outcomes.append(status)
        if changed:
            model.save(self.model_file)
            self._model_stamp = _stamp(self.model_file)
            self._show_model(model)
        return outcomes, changed

    async def _learn_in_store(self, raw: bytes, spam: bool | None, name: str, forget: bool) -> str:
        """One learn in the store (a user's, or the site's: ``SITE``), counted."""
        try:
            outcome = await asyncio.to_thread(self._learn_user, raw, spam, name, forget)
        except Exception:
            self.metrics.learned(spam, "error")
            raise
        self.metrics.learned(spam, outcome)
        return outcome

    def _learn_user(self, raw: bytes, spam: bool | None, user: str, forget: bool) -> str:
        if self._users is None:
            self._users = Users.open(self.config)
        stamp = _stamp(self.model_file)
        if self._user_filter is None or stamp != self._user_stamp:  # the site model changed
            model = LinearModel.load(self.model_file)
            path = str(self.model_file)
            self._user_filter = Filter(self.config, model=model, model_path=path, users=self._users)
            self._user_stamp = stamp
        if user == SITE:
            return self._user_filter.learn_site(raw, spam, forget)
        return self._user_filter.learn_user(raw, spam, user, forget)

    def _refuse_default(self) -> None:
        if self.model_file.resolve() == DEFAULT_MODEL.resolve():
            raise LearnRefused(
                f"{self.model_file}: is the shipped default model; train your own with 'mailsift train' "
                "and serve it before learning single messages"
            )

    def _learning_model(self) -> LinearModel:
        """The model in memory, read again when the file changed under us
        (a ``mailsift train``, or a ``learn --model`` that wrote the file)."""
        stamp = _stamp(self.model_file)
        if self._model is None or stamp != self._model_stamp:
            self._model = LinearModel.load(self.model_file)
            self._model_stamp = stamp
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

    async def close(self, drain: float = 120.0) -> None:
        """Apply the clicks still queued (for up to ``drain`` seconds: the
        ones answered ``queued`` must not be lost), then stop the learner
        (anything left is refused) and the pool."""
        loop = asyncio.get_running_loop()
        until = loop.time() + drain
        if self._pending:  # store learns answered queued (wait=False): let them land
            await asyncio.wait(set(self._pending), timeout=drain)
        while self._task is not None and self._queue is not None and loop.time() < until:
            if self._queue.empty() and not self._busy:
                break
            await asyncio.sleep(0.05)
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
        if self._users is not None:
            self._users.close()


def _stamp(path: Path) -> tuple:
    """Identity of the file at ``path`` now: a save replaces it (new inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _mtime(path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


# -- doors -------------------------------------------------------------------
class Door(Protocol):
    """What :func:`run` needs of a door, constructed as ``Door(service, host,
    port)``.  ``port`` is the bound port after :meth:`start` (port 0 = any
    free port).  :meth:`close` stops accepting at once (run calls it on every
    door before draining any); :meth:`stop` then lets what is in flight
    finish for up to ``grace`` seconds and drops the rest.  A door may also
    have ``reconfigure(config)`` (a reload) and ``summary()`` (its part of
    the stop line)."""

    name: str
    port: int

    async def start(self) -> None: ...

    def close(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class _DoorScorer:
    """The ``score(raw, deadline, context)`` and ``stats`` the SMTP door's
    handler uses, answered by the shared service."""

    def __init__(self, service: Service, door: str):
        self.service, self.door = service, door
        self.stats = service.stats

    async def score(
        self, raw: bytes, deadline: float, context: Context | None = None, user: str | None = None
    ) -> Verdict:
        return await self.service.score(raw, context, self.door, deadline, user)


class SmtpDoor:
    """The SMTP content filter (:class:`mailsift.proxy.ProxyServer`, all of
    it: mirroring, XFORWARD, DSN, no AUTH, no source routes, one log line
    per message) scoring through the shared service."""

    name = "smtp"

    def __init__(self, service: Service, host: str, port: int):
        proxy = replace(service.config.proxy, listen=f"[{host}]:{port}")
        self.server = ProxyServer(
            replace(service.config, proxy=proxy),
            scorer=_DoorScorer(service, self.name),
            on_error=service.metrics.error,
        )
        self.port = port

    async def start(self) -> None:
        await self.server.start()
        self.port = self.server.port

    def reconfigure(self, config: Config) -> None:
        self.server.reconfigure(config)

    def close(self) -> None:
        self.server.close()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)  # the scorer is the service's: not closed here

    def summary(self) -> str:
        return self.server.summary()


def door_class(name: str) -> type:
    if name == "smtp":
        return SmtpDoor
    if name == "milter":
        from .milter import MilterDoor

        return MilterDoor
    if name == "spamd":
        from .spamd import SpamdDoor

        return SpamdDoor
    if name == "http":
        from .http import HttpDoor

        return HttpDoor
    raise ConfigError(f"unknown door {name!r}")


def door_changes(old, new, named: dict[str, str | None] | None = None) -> list[str]:
    """``[serve]`` door addresses that differ between two configs (a door
    given on the command line keeps its flag's address: not a change)."""
    named = named or {}
    return [
        f"{d} ({getattr(old, d) or 'off'} -> {getattr(new, d) or 'off'})"
        for d in DOORS
        if not named.get(d) and getattr(old, d) != getattr(new, d)
    ]


def config_changes(old: Config, new: Config) -> list[str]:
    """``section.key`` names whose value differs (values not shown: one may be a token)."""
    out = []
    for f in fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if is_dataclass(a) and is_dataclass(b):
            out += [f"{f.name}.{g.name}" for g in fields(a) if getattr(a, g.name) != getattr(b, g.name)]
        elif a != b:
            out.append(f.name)
    return out


def door_addresses(config: Config, named: dict[str, str | None] | None = None) -> dict[str, str]:
    """Door -> HOST:PORT for the doors that listen, in :data:`DOORS` order:
    the command line's (``named``), else ``[serve]``'s.  With no door named
    anywhere, the SMTP door listens on ``[proxy] listen``, as mailsift always
    did.  Every address passes the loopback rule (``config.check_listening``),
    and no two doors share one (``config.check_distinct``); an error names the
    flag (``--http``) for an address from the command line, else the key."""
    named = {d: a for d, a in (named or {}).items() if a}
    serve = replace(config.serve, **named)
    doors = {d: getattr(serve, d) for d in DOORS}
    labels = {d: FLAGS[d] if d in named else f"serve.{d}" for d in DOORS}
    if not any(doors.values()):
        doors["smtp"], labels["smtp"] = config.proxy.listen, "proxy.listen"
    listening = {d: a for d, a in doors.items() if a}
    for door, address in listening.items():
        host, _ = split_hostport(address, labels[door])
        if not config.proxy.allow_non_loopback and not is_loopback(host):
            raise ConfigError(loopback_refusal(labels[door], address))
    check_distinct({labels[d]: a for d, a in listening.items()})
    checked = replace(config, serve=replace(serve, **listening))
    validate(checked)  # the rest of the config with these addresses in it
    return listening


#: the command-line flag of each door
FLAGS = {"smtp": "--listen", "milter": "--milter", "spamd": "--spamd", "http": "--http"}


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
    logs.configure(config.proxy.log_format)
    addresses = door_addresses(config, named)
    service = Service(config, model_path, workers)
    await service.start()
    doors: list = []
    try:
        for name, address in addresses.items():
            host, port = split_hostport(address, f"serve.{name}")
            door = door_class(name)(service, host, port)
            try:
                await door.start()
            except OSError as exc:  # port in use, no permission: told apart from other OSErrors
                raise ListenError(address, exc.strerror or str(exc)) from None
            doors.append(door)
    except BaseException:
        for door in doors:
            door.close()
        for door in doors:
            await door.stop(0)
        await service.close()
        raise

    config_mtime = _mtime(config_path) if config_path else 0.0
    last_reload = [float("-inf")]  # monotonic time of the last reload

    def reload(why: str = "SIGHUP") -> None:
        nonlocal config_mtime
        old = service.config
        new = old
        model_stamp = _stamp(service.model_file)
        config_stamp = _mtime(config_path) if config_path else 0.0
        if (
            why == "SIGHUP"
            and time.monotonic() - last_reload[0] < max(2 * watch_every, 5.0)
            and _mtime(service.scorer.model_file) == service.scorer.model_mtime
            and config_stamp == config_mtime
        ):
            # the file watcher reloaded these very files a moment ago: once is enough
            log.info("SIGHUP: model and config unchanged since the reload %.1f s ago; nothing to reload",
                     time.monotonic() - last_reload[0])  # fmt: skip
            return
        model_changed = _mtime(service.scorer.model_file) != service.scorer.model_mtime
        if config_path:
            config_mtime = config_stamp  # a bad file is not retried every tick
            try:
                new = load_config(config_path)
                new.proxy = replace(new.proxy, **(overrides or {}))
                moved = door_changes(old.serve, new.serve, named)
                if moved:
                    log.warning("[serve] %s changed in %s: door addresses are read only at start; "
                                "restart mailsift serve to apply", ", ".join(moved), config_path)  # fmt: skip
                # door addresses stay as they were; the token and timeouts apply now
                new.serve = replace(new.serve, **{d: getattr(old.serve, d) for d in DOORS})
                validate(new)
            except ConfigError as exc:
                log.error("reload refused, keeping the current config: %s", exc)
                return
        if not service.reload(new):
            service.scorer.model_mtime = _mtime(service.scorer.model_file)
            return
        last_reload[0] = time.monotonic()
        for door in doors:
            if hasattr(door, "reconfigure"):
                door.reconfigure(service.config)
        changed = config_changes(old, new)
        model_text = service.describe_model()
        model_note = "new file" if model_changed or _stamp(service.model_file) != model_stamp else "unchanged"
        config_text = (
            f"; config {config_path} ({'changed: ' + ', '.join(changed[:8]) if changed else 'unchanged'})"
            if config_path
            else ""
        )
        log.info("reloaded: model %s (%s)%s [%s]", model_text, model_note, config_text, why)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, "SIGHUP")
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), watch_every)
        except TimeoutError:
            await asyncio.to_thread(service.replay_queued)  # queued user learns land without traffic
            model_changed = _mtime(service.scorer.model_file) != service.scorer.model_mtime
            config_changed = bool(config_path) and _mtime(config_path) != config_mtime
            if model_changed or config_changed:
                what = " and ".join(w for w, c in (("model", model_changed), ("config", config_changed)) if c)
                reload(f"{what} changed on disk")
    log.info("stopping: no new connections; finishing sessions in flight")
    for door in doors:  # every listening socket closed before any door drains
        door.close()
    grace = service.config.proxy.relay_timeout
    await asyncio.gather(*(door.stop(grace) for door in doors))
    await service.close()
    parts = [door.summary() for door in doors if hasattr(door, "summary")]
    others = [d.name for d in doors if not hasattr(d, "summary")]
    if others:
        counts = service.metrics.messages_by_door()
        parts.append(", ".join(f"{name} door: {counts.get(name, 0)} messages" for name in others))
    log.info("stopped: %s", "; ".join(parts) or "no doors")
