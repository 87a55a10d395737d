"""The supervised scoring pool with real worker processes, under every
multiprocessing start method: dead workers are replaced and their message
retried, a message past its deadline costs its worker, workers load the
bytes their parent verified and hold none of its sockets.

Slow messages are made the way a live server meets them: a DNS server on
loopback that never answers, with a blocklist configured."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from dataclasses import replace

import pytest
from conftest import HAM

from mailsift.config import Config
from mailsift.filter import DEFAULT_MODEL, Filter
from mailsift.pool import ScoringTimeout, WorkerDied
from mailsift.proxy import Scorer
from mailsift.rules import Context, Zone

METHODS = ["forkserver", "spawn", "fork"]
#: a public client address: with a blocklist configured it is looked up
SLOW = Context(client_ip="81.2.69.161")


@pytest.fixture
def silent_dns():
    """A DNS server on loopback that never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


def _config(method: str, dns_port: int | None = None, dns_deadline: float = 2.0) -> Config:
    config = Config()
    config.proxy = replace(config.proxy, start_method=method)
    if dns_port:
        config.dns.servers = [f"127.0.0.1:{dns_port}"]
        config.dns.timeout = 10.0
        config.dns.deadline = dns_deadline
        config.dnsbl = [Zone(name="RCVD_IN_TEST", zone="bl.test.example")]
    return config


@pytest.fixture
def scorers():
    made = []

    def make(config: Config, workers: int = 1, model: str | None = None) -> Scorer:
        s = Scorer(config, model, workers)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/status") as fh:
                if any(line.split()[1:2] == ["Z"] for line in fh if line.startswith("State:")):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("method", METHODS)
def test_scorer_scores_in_worker_processes_under_every_start_method(scorers, method):
    scorer = scorers(_config(method), workers=2)
    pids = scorer.pool.pids
    assert len(pids) == 2 and os.getpid() not in pids

    async def both():
        return await asyncio.gather(scorer.score(HAM, 30), scorer.score(HAM, 30))

    verdicts = asyncio.run(both())
    expected = Filter(Config()).score(HAM, evidence=3)
    assert [v.score for v in verdicts] == [expected.score] * 2
    assert scorer.stats.started == 2 and scorer.stats.died == 0
    scorer.close()
    assert all(_gone(pid) for pid in pids)


@pytest.mark.parametrize("method", METHODS)
def test_killed_worker_is_replaced_and_its_message_retried(scorers, silent_dns, method):
    scorer = scorers(_config(method, silent_dns, dns_deadline=1.5))
    asyncio.run(scorer.score(HAM, 30))  # the worker is up
    [victim] = scorer.pool.pids

    async def kill_mid_scoring():
        task = asyncio.create_task(scorer.score(HAM, 30, SLOW))
        await asyncio.sleep(0.5)  # it is waiting for DNS now
        os.kill(victim, signal.SIGKILL)
        return await task

    verdict = asyncio.run(kill_mid_scoring())
    assert "DNS_DEADLINE" in [h.name for h in verdict.hits]  # scored, on the second try
    assert (scorer.stats.died, scorer.stats.retried) == (1, 1)
    assert scorer.pool.pids != [victim] and len(scorer.pool.pids) == 1
    # a worker killed while idle is noticed and replaced before it is used
    [idle] = scorer.pool.pids
    os.kill(idle, signal.SIGKILL)
    assert _gone(idle)
    assert asyncio.run(scorer.score(HAM, 30)).action == "accept"
    assert scorer.stats.died == 2 and idle not in scorer.pool.pids


@pytest.mark.parametrize("method", METHODS)
def test_message_past_its_deadline_kills_its_worker(scorers, silent_dns, method):
    scorer = scorers(_config(method, silent_dns, dns_deadline=5.0))
    asyncio.run(scorer.score(HAM, 30))
    [busy] = scorer.pool.pids
    started = time.monotonic()
    with pytest.raises(ScoringTimeout):
        asyncio.run(scorer.score(HAM, 0.5, SLOW))
    assert time.monotonic() - started < 2.0  # not the 5 s the worker would have taken
    assert _gone(busy)
    assert scorer.stats.timed_out == 1 and scorer.pool.pids != [busy]
    assert asyncio.run(scorer.score(HAM, 30)).action == "accept"  # the replacement scores


def test_a_message_that_kills_every_worker_fails_once_and_the_pool_recovers(scorers, monkeypatch):
    """Failure injection (inherited by forked workers): scoring crashes the
    process.  The message is tried twice, then given up (the proxy applies
    on_scoring_error); the pool is whole again afterwards."""
    real = Filter.score
    monkeypatch.setattr(Filter, "score", lambda self, *a, **k: os._exit(3))
    scorer = scorers(_config("fork"))
    with pytest.raises(WorkerDied, match="died twice"):
        asyncio.run(scorer.score(HAM, 30))
    assert (scorer.stats.died, scorer.stats.retried) == (2, 1)
    monkeypatch.setattr(Filter, "score", real)
    # the replacement may have been forked with the crash in it: then it dies too,
    # and the message is retried on one forked after the repair
    assert asyncio.run(scorer.score(HAM, 30)).action == "accept"
    assert len(scorer.pool.pids) == 1


@pytest.mark.parametrize("method", METHODS)
def test_workers_load_the_bytes_their_parent_verified_not_the_file(scorers, tmp_path, method):
    model = tmp_path / "model.npz"
    shutil.copy(DEFAULT_MODEL, model)
    scorer = scorers(_config(method), model=str(model))
    good = asyncio.run(scorer.score(HAM, 30)).score
    model.write_bytes(b"PK\x03\x04 not a model any more")  # swapped on disk
    assert scorer.reload(_config(method)) is False  # refused: the running model stays
    for _ in range(2):  # replacements are started from the verified bytes
        [pid] = scorer.pool.pids
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid)
        assert asyncio.run(scorer.score(HAM, 30)).score == good
    assert scorer.stats.died == 2


def test_forked_workers_hold_none_of_the_parents_sockets(scorers):
    """A worker forked while the filter listens must not keep the port
    open: after the filter closes it, the kernel would go on accepting
    connections nobody answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    inode = os.fstat(listener.fileno()).st_ino
    try:
        scorer = scorers(_config("fork"))
        asyncio.run(scorer.score(HAM, 30))  # the worker has set itself up
        [pid] = scorer.pool.pids
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    finally:
        listener.close()
    assert f"socket:[{inode}]" not in links
    assert sum(link.startswith("socket:") for link in links) == 1  # its own pipe to the filter


def test_reload_moves_waiting_messages_to_the_new_workers(scorers, silent_dns):
    scorer = scorers(_config("forkserver", silent_dns, dns_deadline=1.5))
    asyncio.run(scorer.score(HAM, 30))
    [old] = scorer.pool.pids

    async def go():
        slow = asyncio.create_task(scorer.score(HAM, 30, SLOW))  # holds the only worker
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(scorer.score(HAM, 30))
        await asyncio.sleep(0.2)
        assert scorer.reload(_config("forkserver", silent_dns, dns_deadline=1.5))
        return await asyncio.gather(slow, waiting)

    slow, waiting = asyncio.run(go())
    assert "DNS_DEADLINE" in [h.name for h in slow.hits] and waiting.action == "accept"
    assert old not in scorer.pool.pids
    assert _gone(old)  # retired once its message was done


def test_a_worker_killed_while_it_starts_does_not_block_the_pool(scorers, caplog):
    """Under spawn a new worker takes ~0.5 s to import mailsift before it
    reads its model; killed in that window, its start fails (it used to
    block for ever inside multiprocessing) and another is started."""
    import multiprocessing

    scorer = scorers(_config("spawn"))
    old = set(scorer.pool.pids)

    async def go():
        assert scorer.reload(_config("spawn"))  # the new pool starts its worker in a thread
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            new = [p.pid for p in multiprocessing.active_children() if p.pid not in old]
            if new:
                os.kill(new[0], signal.SIGKILL)
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("no new worker started")
        return await scorer.score(HAM, 20), new[0]

    verdict, killed = asyncio.run(go())
    assert verdict.action == "accept" and killed not in scorer.pool.pids
    assert "could not start a scoring worker" in caplog.text
