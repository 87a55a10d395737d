"""A small supervised pool of scoring processes, each over its own pipe.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers
dies (``kill -9``, the OOM killer, a crash in a C library) the whole
executor is broken and every later message fails until someone restarts
it; and a message cannot be taken back from a worker once it runs.  Here
each worker is supervised on its own:

- a worker found dead (idle, or while it scored) is replaced, and the
  message it held is retried once on another worker;
- a message past its deadline gets its worker killed (``SIGKILL``: a
  message stuck in a regular expression cannot be interrupted any other
  way) and replaced; the caller gets :class:`ScoringTimeout`;
- workers load the model from the bytes the parent verified, never from
  the path, so a file replaced on disk after a reload cannot break them;
- workers close every socket they inherited (under ``fork``), and the
  default start method is ``forkserver``, whose workers never had them: a
  worker must not keep the filter's listening port open after SIGTERM;
- every failure is counted in :class:`PoolStats` and logged once.

The parent side runs on the asyncio event loop; each round trip to a worker
(send the message, wait for the verdict) runs in a thread, so neither a
large message nor a stuck worker blocks the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import signal
import stat
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

from . import logs
from .config import Config
from .rules import Context
from .score import Verdict

log = logging.getLogger("mailsift.pool")

START_METHODS = ("forkserver", "spawn", "fork")


class ScoringTimeout(TimeoutError):
    """The message was not scored within its deadline."""


class WorkerDied(Exception):
    """The worker scoring the message exited (twice, counting the retry)."""


class ScoringError(Exception):
    """The filter raised while scoring (a bug); the worker is still fine."""


class PoolBusy(Exception):
    """No worker became free within the queue wait: every worker is busy
    with other messages (a burst, slow DNS).  Not a scanning failure: the
    proxy tempfails the message (451) so the MTA retries it later, instead
    of passing it unscanned."""


class PoolRetired(Exception):
    """The pool was replaced by a reload while the message waited for a
    worker; the caller tries the new pool."""


@dataclass
class PoolStats:
    """What the pool went through since start (all pools of one Scorer)."""

    started: int = 0  # worker processes started, replacements included
    died: int = 0  # found dead without us killing them
    timed_out: int = 0  # killed by us at a message's deadline
    retried: int = 0  # messages retried after their worker died
    errors: int = 0  # exceptions raised by the filter inside a worker
    dns_hits: int = 0  # DNS lookups the workers' resolver caches answered
    dns_misses: int = 0  # DNS lookups sent to a server
    #: the workers' own shared-store clients (each worker reads the store at
    #: every message; the service's /metrics adds these to its own counts):
    store_errors: int = 0  # store commands that failed or timed out, all workers
    store_outages: int = 0  # outages as each worker saw them (one per worker per outage)
    #: ``time.monotonic()`` here when a worker last said the store is down (0: its
    #: last message found it up); the service compares it with its own last answer
    store_down_at: float = 0.0


class DnsCount:
    """The DNS lookups one filter's resolver made since the last call: the
    cache lives in the scoring process, the metrics in the service, so each
    verdict travels back with the lookups that made it."""

    def __init__(self, scorer) -> None:
        self.resolver = scorer.network.resolver
        self.hits = self.misses = 0

    def delta(self) -> tuple[int, int]:
        r = self.resolver
        out = (r.hits - self.hits, r.queries - self.misses)
        self.hits, self.misses = r.hits, r.queries
        return out


class StoreCount:
    """The shared-store failures one filter's store client had since the
    last call, and whether it is down now: the client lives in the scoring
    process, the metrics in the service, so each verdict travels back with
    them, as with :class:`DnsCount`.  All zero until the filter opens a
    store (``[store] url``)."""

    def __init__(self, scorer) -> None:
        self.scorer = scorer
        self.errors = self.outages = 0

    def delta(self) -> tuple[int, int, bool]:
        users = self.scorer._users
        if users is None or not users.store.remote:
            return 0, 0, False
        st = users.store.status()
        out = (st.errors - self.errors, st.outages - self.outages, st.outage)
        self.errors, self.outages = st.errors, st.outages
        return out


def add_store_counts(stats: PoolStats, delta: tuple[int, int, bool]) -> None:
    errors, outages, down = delta
    stats.store_errors += errors
    stats.store_outages += outages
    stats.store_down_at = time.monotonic() if down else 0.0


# -- the worker process --------------------------------------------------------
def _drop_inherited_sockets(keep: int) -> None:
    """Under ``fork`` a worker starts with every socket of the filter: the
    listening port, client sessions, connections to the next hop.  Holding
    them would keep the port accepting connections after the filter closed
    it, and keep sessions open after the filter ended them.  Each is pointed
    at /dev/null (not closed, so a stale Python object closing its number
    later cannot close something else)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        if fd <= 2 or fd in (keep, devnull):
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.dup2(devnull, fd)
        except OSError:
            pass
    os.close(devnull)


def _detach_from_filter(parent: int) -> None:
    """The worker must not act on the filter's signals (SIGTERM means stop
    now; SIGHUP and SIGINT sent to the process group are the filter's), and
    must not outlive it: Linux sends SIGTERM when the process that started
    it dies, and a watchdog thread covers ``forkserver``, where that
    process is the fork server, not the filter."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        signal.set_wakeup_fd(-1)  # inherited under fork: the filter's event loop
    except ValueError:
        pass
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def watchdog() -> None:
        while True:
            try:
                os.kill(parent, 0)
            except (ProcessLookupError, PermissionError):
                os._exit(0)
            except OSError:
                pass
            time.sleep(1.0)

    if not _alive(parent):
        os._exit(0)
    threading.Thread(target=watchdog, name="mailsift-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        pass
    return True


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame, to point at a bug in one log line."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {os.path.basename(last.filename)}:{last.lineno})"


def worker_main(conn, config: Config, model_name: str, log_format: str, parent: int) -> None:
    """A scoring worker: read the model's bytes from the pipe, load them,
    say ready, then answer (raw, context, user) with ("ok", Verdict) or
    ("error", text) until the pipe closes; ``user`` (None: the site model's
    alone) is scored with the worker's own store client (``[store]``)."""
    _drop_inherited_sockets(conn.fileno())
    _detach_from_filter(parent)
    logs.configure(log_format)
    try:
        _serve(conn, config, conn.recv_bytes(), model_name)
    except (EOFError, OSError):
        return  # the filter closed the pipe (stop, reload) or died: nothing to tell
    except Exception:  # a bug: one log line (JSON in JSON mode), not multiprocessing's traceback
        log.exception("scoring worker %d failed", os.getpid())
        raise SystemExit(1) from None


def _serve(conn, config: Config, model_bytes: bytes, model_name: str) -> None:
    from .filter import Filter
    from .model import LinearModel

    try:
        model = LinearModel.load(model_name, data=model_bytes)
        # scoring only: the service's watch loop is the one process that replays queued learns
        # (and counts what it replayed and set aside for the metrics door)
        scorer = Filter(config, model=model, model_path=model_name, replay=False, from_file=True)
    except Exception as exc:
        conn.send(("init-error", f"{type(exc).__name__}: {exc}"))
        return
    del model_bytes
    conn.send(("ready", os.getpid()))
    dns, store = DnsCount(scorer), StoreCount(scorer)
    while True:
        raw, context, user = conn.recv()
        try:
            verdict = scorer.score(raw, evidence=3, context=context, user=user)
            reply: tuple = ("ok", verdict, dns.delta(), store.delta())
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}{_where(exc)}", dns.delta(), store.delta())
        conn.send(reply)


# -- the parent side -------------------------------------------------------------
class _Worker:
    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        self.pid: int = process.pid
        #: a round trip is running in a thread: the pipe is closed only after it
        #: (a closed descriptor's number is reused at once, by the replacement's
        #: pipe, and the thread must not read that one)
        self.busy = False
        self.discarded = False

    def alive(self) -> bool:
        return self.process.is_alive()

    def exit_text(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "stopped answering"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"


class WorkerPool:
    """``size`` worker processes scoring with one model; see the module
    docstring.  All methods but the constructor and :meth:`close` run on
    the event loop."""

    def __init__(
        self,
        size: int,
        config: Config,
        model_bytes: bytes,
        model_name: str,
        stats: PoolStats,
        start_method: str = "forkserver",
        log_format: str = "text",
        background: bool = False,
    ):
        """``background``: start the workers in threads (a reload, on the
        event loop: sessions go on meanwhile); else here, so that a worker
        that cannot start is an error at start-up."""
        if start_method not in START_METHODS:
            raise ValueError(f"start method must be one of {', '.join(START_METHODS)}")
        self.ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # the fork server imports these once; each worker then starts in milliseconds
            self.ctx.set_forkserver_preload(["mailsift.pool", "mailsift.filter"])
        self.size = size
        self.config = config
        self.model_bytes = model_bytes
        self.model_name = model_name
        self.stats = stats
        self.log_format = log_format
        self.retired = False
        self._workers: set[_Worker] = set()
        self._idle: list[_Worker] = []
        self._waiters: deque[asyncio.Future] = deque()
        self._starting = 0  # replacements being started in a thread
        self._failed_at = -1e9  # when a start last failed
        self._lock = threading.Lock()
        self._ready: list[concurrent.futures.Future] = []  # started, not yet harvested
        # a round trip per busy worker, a start per replacement, room for ones being killed
        self._io = concurrent.futures.ThreadPoolExecutor(size * 3 + 2, thread_name_prefix="mailsift-pool")
        for _ in range(size):
            if background:
                self._top_up()
            else:
                self._add(self._start_process())

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers)

    def _start_process(self) -> _Worker:
        """Start one worker and send it the model.  Blocking (under spawn and
        forkserver the new process reads the bytes only once it has imported
        mailsift: 0.2 to 0.9 s measured), so replacements are started in a
        thread, off the loop.  The model goes over the worker's own pipe, not
        in the start arguments: multiprocessing writes those through a pipe
        whose reading end the parent itself holds until the write is done,
        so a worker killed while starting would block that write for ever;
        on our pipe its death is an error here."""
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=worker_main,
            args=(child_end, self.config, self.model_name, self.log_format, os.getpid()),
            name="mailsift-scorer",
            daemon=True,
        )
        try:
            process.start()
        finally:
            child_end.close()  # else the parent would never see the worker's end close
        try:
            parent_end.send_bytes(self.model_bytes)
        except OSError:
            parent_end.close()
            process.kill()
            process.join(5)
            raise
        return _Worker(process, parent_end)

    def _add(self, worker: _Worker) -> None:
        self._workers.add(worker)
        self._idle.append(worker)
        self.stats.started += 1

    # -- handing out workers
    async def _acquire(self) -> _Worker:
        loop = asyncio.get_running_loop()
        while True:
            self._harvest()
            if self.retired:
                raise PoolRetired
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                self.stats.died += 1
                log.warning("scoring worker %d %s while idle; replaced", worker.pid, worker.exit_text())
                self._discard(worker)
            self._top_up()  # a replacement that failed to start earlier
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:  # woken by a release or a started replacement; checked again every 0.25 s
                await asyncio.wait([waiter], timeout=0.25)
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _release(self, worker: _Worker) -> None:
        if self.retired:
            self._discard(worker, replace=False)
            return
        self._idle.append(worker)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _discard(self, worker: _Worker, replace: bool = True) -> None:
        """Kill (if needed) and reap ``worker``; start its replacement."""
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.discarded = True
        if worker.alive():
            worker.process.kill()
        if not worker.busy:
            worker.conn.close()
        # reap it without blocking the event loop
        threading.Thread(target=worker.process.join, args=(10,), name="mailsift-reap", daemon=True).start()
        if replace and not self.retired:
            self._top_up()
            self._wake()
        if self.retired and not self._workers and not self._starting:
            self._io.shutdown(wait=False)

    def _top_up(self) -> None:
        """Start a replacement in a thread; it joins the idle workers when up
        (:meth:`_harvest`, run on the loop, or by the next :meth:`_acquire`
        if that loop is gone)."""
        if self.retired or len(self._workers) + self._starting >= self.size:
            return
        if time.monotonic() - self._failed_at < 1.0:  # a start just failed: not in a tight loop
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop (a reload from plain code): start it here
            try:
                self._add(self._start_process())
            except Exception as exc:
                self._failed_at = time.monotonic()
                log.error("could not start a scoring worker: %s", exc)
            return
        self._starting += 1
        future = self._io.submit(self._start_process)
        future.add_done_callback(lambda f: self._started(f, loop))

    def _started(self, future: concurrent.futures.Future, loop: asyncio.AbstractEventLoop) -> None:
        """In the starting thread: hand the new worker to the loop."""
        with self._lock:
            self._ready.append(future)
        try:
            loop.call_soon_threadsafe(self._harvest)
        except RuntimeError:  # that loop is closed; the next _acquire harvests
            pass

    def _harvest(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for future in ready:
            self._starting -= 1
            exc = future.exception()
            if exc is not None:  # fork failing (EAGAIN, ENOMEM), killed while starting: tried again
                self._failed_at = time.monotonic()
                log.error("could not start a scoring worker: %s", exc)
            elif self.retired:
                worker = future.result()
                self._workers.add(worker)
                self._discard(worker, replace=False)
            else:
                self._add(future.result())
        if ready:
            self._wake()

    # -- scoring
    @staticmethod
    def _round_trip(worker: _Worker, raw: bytes, context: Context, user: str | None = None) -> tuple:
        """In a thread: send one message, wait for its answer."""
        try:
            worker.conn.send((raw, context, user))
            while True:
                reply = worker.conn.recv()
                if reply[0] == "ready":
                    continue
                if reply[0] == "init-error":
                    raise WorkerDied(f"could not start: {reply[1]}")
                return reply
        except (EOFError, OSError) as exc:
            worker.process.join(2)
            raise WorkerDied(f"{type(exc).__name__}") from None

    async def run(
        self,
        raw: bytes,
        context: Context,
        deadline: float,
        queue_wait: float | None = None,
        user: str | None = None,
    ) -> Verdict:
        """Score ``raw`` (with ``user``'s model and lists, None: the site's)
        within ``deadline`` seconds of a worker taking it; a worker that dies
        meanwhile costs one retry.  Time spent waiting for a free worker is
        not charged to the deadline (a queued message did not make its worker
        hang): it is bounded by ``queue_wait`` (default ``deadline``), past
        which :class:`PoolBusy` is raised."""
        loop = asyncio.get_running_loop()
        wait = deadline if queue_wait is None else queue_wait
        queue_end = loop.time() + wait
        for attempt in (1, 2):
            try:
                worker = await asyncio.wait_for(self._acquire(), max(queue_end - loop.time(), 0.0))
            except TimeoutError:
                raise PoolBusy(f"no scoring worker free within {wait:.3g} s") from None
            end = loop.time() + deadline
            worker.busy = True
            future = loop.run_in_executor(self._io, self._round_trip, worker, raw, context, user)
            future.add_done_callback(_consume)
            future.add_done_callback(lambda f, w=worker: _round_trip_done(w))
            try:
                reply = await asyncio.wait_for(asyncio.shield(future), max(end - loop.time(), 0.0))
            except TimeoutError:
                self.stats.timed_out += 1
                log.warning(
                    "scoring worker %d still busy at the %.3g s deadline: killed and replaced",
                    worker.pid,
                    deadline,
                )
                self._discard(worker)
                raise ScoringTimeout(f"scoring took over {deadline:.3g} s") from None
            except asyncio.CancelledError:
                # the session went away: the worker is released (or replaced) when it answers
                future.add_done_callback(lambda f, w=worker: self._after(w, f))
                raise
            except WorkerDied as exc:
                self.stats.died += 1
                again = attempt == 1
                self.stats.retried += again
                log.warning(
                    "scoring worker %d %s while scoring a message (%s); %s",
                    worker.pid,
                    worker.exit_text(),
                    exc,
                    "replaced, retrying the message" if again else "replaced; the message stays unscanned",
                )
                self._discard(worker)
                if again:
                    continue
                raise WorkerDied(f"the scoring worker died twice ({exc})") from None
            self._release(worker)
            hits, misses = reply[2]
            self.stats.dns_hits += hits
            self.stats.dns_misses += misses
            add_store_counts(self.stats, reply[3])
            if reply[0] == "ok":
                return reply[1]
            self.stats.errors += 1
            raise ScoringError(reply[1])
        raise AssertionError("unreachable")

    def _after(self, worker: _Worker, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            self._discard(worker)
        else:
            self._release(worker)

    # -- stopping
    def retire(self) -> None:
        """A reload replaced this pool: idle workers leave now, busy ones
        after their message; messages waiting for a worker move on."""
        self.retired = True
        for worker in list(self._idle):
            self._discard(worker, replace=False)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if not self._workers and not self._starting:
            self._io.shutdown(wait=False)

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker: closing its pipe ends an idle one; a busy one
        (its message abandoned: sessions have been drained) is killed, and
        what is still running after ``timeout`` too.  Blocking."""
        self.retired = True
        for worker in self._workers:
            if worker.busy:  # its thread still reads the pipe: kill, do not close
                worker.process.kill()
            else:
                worker.conn.close()
        end = time.monotonic() + timeout
        for worker in list(self._workers):
            worker.process.join(max(end - time.monotonic(), 0.0))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
        self._io.shutdown(wait=True)  # starts in flight finish; round trips end with their workers
        with self._lock:
            ready, self._ready = self._ready, []
        for future in ready:
            if future.exception() is None:
                worker = future.result()
                worker.conn.close()
                worker.process.join(2)
                if worker.process.is_alive():
                    worker.process.kill()
        self._workers.clear()
        self._idle.clear()


def _round_trip_done(worker: _Worker) -> None:
    worker.busy = False
    if worker.discarded:
        worker.conn.close()


def _consume(future: asyncio.Future) -> None:
    """Fetch the exception of a round trip nobody awaits any more (a killed
    worker's), so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def describe(stats: PoolStats) -> dict[str, Any]:
    keys = ("started", "died", "timed_out", "retried", "errors", "dns_hits", "dns_misses")
    return {k: getattr(stats, k) for k in keys}
