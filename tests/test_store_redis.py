"""Per-user state shared on a real Redis, and on a real 3-master Redis
Cluster on loopback: two independent store clients ("node A" and "node B",
each with its own connection, cache and queue) stand for two mailsift nodes
behind two MX hosts."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import SA, RedisCluster, RedisProc

from mailsift import Filter
from mailsift.config import Config
from mailsift.corpus import read_index
from mailsift.store.queue import QueuedLearn
from mailsift.users import QUEUED, Users


@pytest.fixture(scope="module")
def mail():
    items = read_index(SA / "test.index")
    ham = [i.path.read_bytes() for i in items if not i.spam][:8]
    spam = [i.path.read_bytes() for i in items if i.spam][:12]
    return ham, spam


@dataclass
class Shared:
    """One Redis deployment under test, and how to break it."""

    url: str
    kind: str
    servers: list  # RedisProc

    def server_of(self, user: str) -> RedisProc:
        if self.kind == "redis":
            return self.servers[0]
        return self.cluster.node_of(f"mailsift:{{{user}}}:m")

    def restart(self, server: RedisProc) -> None:
        server.start()
        if self.kind == "cluster":
            self.cluster.wait_ok()


@pytest.fixture(params=["redis", "cluster"])
def shared(request, tmp_path):
    if request.param == "redis":
        server = RedisProc(tmp_path / "redis")
        yield Shared(f"redis://127.0.0.1:{server.port}/0", "redis", [server])
        server.close()
    else:
        cluster = RedisCluster(tmp_path / "cluster")
        s = Shared(cluster.url, "cluster", cluster.nodes)
        s.cluster = cluster
        yield s
        cluster.close()


def _config(shared: Shared, folder: Path, name: str) -> Config:
    config = Config()
    config.store = replace(
        config.store, url=shared.url, queue=str(folder / f"{name}-queue.jsonl"), retry_every=0.2
    )
    return config


def _node(shared: Shared, folder: Path, name: str) -> Filter:
    config = _config(shared, folder, name)
    return Filter(config, users=Users.open(config))


def _wait(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_learn_on_node_a_raises_alices_score_on_node_b_and_bob_does_not_move(shared, tmp_path, mail):
    a, b = _node(shared, tmp_path, "a"), _node(shared, tmp_path, "b")
    ham = mail[0][0]
    site = b.score(ham)
    bob_before = b.score(ham, user="bob")
    assert b.score(ham, user="alice").log_odds == site.log_odds  # a new user is the site model
    assert a.learn_user(ham, True, "alice") == "learned"
    took = _wait(lambda: b.score(ham, user="alice").log_odds > site.log_odds + 1.0, timeout=5.0)
    assert took < 5.0
    assert b.learn_user(ham, True, "alice") == "already-learned"
    bob = b.score(ham, user="bob")
    assert bob.log_odds == bob_before.log_odds and bob.score == bob_before.score
    # a third node in its own process: the command line on the same store
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "{shared.url}"\nqueue = "{tmp_path / "cli-queue.jsonl"}"\n')
    msg = tmp_path / "m.eml"
    msg.write_bytes(ham)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "engine")}
    run = [sys.executable, "-m", "mailsift.cli", "--config", str(cfg)]
    out = subprocess.run([*run, "score", "--json", "--user", "alice", str(msg)], capture_output=True, env=env)
    verdict = json.loads(out.stdout)
    assert verdict["user"] == "alice" and verdict["user_log_odds"] > 1.0 and verdict["user_spam"] == 1
    again = subprocess.run(
        [*run, "learn", "--spam", "--user", "alice", str(msg)], capture_output=True, env=env
    )
    assert again.returncode == 0 and b"already learned as spam for alice" in again.stdout
    undo = subprocess.run(
        [*run, "unlearn", "--spam", "--user", "alice", str(msg)], capture_output=True, env=env
    )
    assert undo.returncode == 0 and b"unlearned" in undo.stdout
    assert a.score(ham, user="alice").log_odds == site.log_odds  # exact: every slot deleted


def test_a_users_keys_share_one_cluster_slot_and_a_message_costs_one_round_trip(shared, tmp_path, mail):
    """Per message: one round trip for the site's learns (``%site``, read for
    every verdict with a shared store) and one for the user's; per learn, the
    site's read, the user's read with the ledger entry, then the script."""
    a = _node(shared, tmp_path, "a")
    assert a.learn_user(mail[1][0], True, "alice") == "learned"
    # the shipped default was trained on this spam: learned as ham, the store keeps the relabel
    assert a.learn_site(mail[1][2], False) == "relabelled"
    a.users.set_lists("alice", a.users.lists("alice"))
    for tag, n in (("alice", 3), ("%site", 3)):
        server = shared.server_of(tag)
        keys = [k for k in server.cli("--scan", "--pattern", "mailsift:*").split() if f"{{{tag}}}" in k]
        assert len(keys) == n, keys
        assert len({server.cli("CLUSTER", "KEYSLOT", k).strip() for k in keys}) == 1 or shared.kind == "redis"
    for server in shared.servers:
        server.cli("CONFIG", "RESETSTAT")
    a.score(mail[1][1], user="alice")
    stats = _all_commandstats(shared)
    assert stats == {"hmget": 4}, stats  # each of site and user: slots, then lists and counts, one pipeline
    assert _commandstats(shared.server_of("alice")).get("hmget", 0) >= 2
    for server in shared.servers:
        server.cli("CONFIG", "RESETSTAT")
    assert a.learn_user(mail[1][1], True, "alice") == "learned"
    stats = _all_commandstats(shared)
    # sent by the client: the site's read (two HMGET), the user's read (two HMGET and the ledger's
    # HGET, written together), then the script; INFO also counts the script's own HGET of the
    # ledger entry and HMGET/HSET per 1,000 slots, which cost no round trip
    assert stats.pop("evalsha", 0) + stats.pop("eval", 0) == 1
    assert stats.pop("hget") == 2 and stats.pop("hmget") >= 4
    assert set(stats) <= {"hset", "hdel", "hincrby"}, stats


def _all_commandstats(shared: Shared) -> dict[str, int]:
    total: dict[str, int] = {}
    for server in shared.servers:
        for name, calls in _commandstats(server).items():
            total[name] = total.get(name, 0) + calls
    return total


def _commandstats(server: RedisProc) -> dict[str, int]:
    out = {}
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            calls = int(rest.split(",")[0].split("=")[1])
            name = name.removeprefix("cmdstat_")
            if name not in ("info", "config|resetstat", "cluster|slots", "cluster|shards", "command|docs"):
                out[name] = calls
    return out


def test_concurrent_clicks_on_two_nodes_lose_no_update(shared, tmp_path, mail):
    a, b = _node(shared, tmp_path, "a"), _node(shared, tmp_path, "b")
    spam = mail[1][:12]
    results: dict[str, list[str]] = {}

    def click(node, name, msgs):
        results[name] = [node.learn_user(m, True, "alice") for m in msgs]

    threads = [
        threading.Thread(target=click, args=(a, "a", spam[0::2])),
        threading.Thread(target=click, args=(b, "b", spam[1::2])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"a": ["learned"] * 6, "b": ["learned"] * 6}
    assert a.score(spam[0], user="alice").user_spam == 12
    # the same message clicked on both at once is learned once
    same = mail[0][1]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def both(node):
        barrier.wait()
        outcomes.append(node.learn_user(same, True, "alice"))

    threads = [threading.Thread(target=both, args=(n,)) for n in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["already-learned", "learned"]
    assert b.score(same, user="alice").user_spam == 13


def test_with_redis_stopped_scores_use_last_known_values_and_learns_are_replayed(
    shared, tmp_path, mail, caplog
):
    a, b = _node(shared, tmp_path, "a"), _node(shared, tmp_path, "b")
    ham, other = mail[0][0], mail[0][2]
    assert a.learn_user(ham, True, "alice") == "learned"
    known = b.score(ham, user="alice")
    site_other = b.score(other, user="alice").log_odds
    server = shared.server_of("alice")
    server.stop(save=True)
    caplog.set_level(logging.WARNING, logger="mailsift.store")
    for _ in range(5):
        start = time.monotonic()
        v = b.score(ham, user="alice")
        assert time.monotonic() - start < 2.0
        assert v.user_stale and v.log_odds == known.log_odds
        time.sleep(0.1)
    assert b.learn_user(other, True, "alice") == QUEUED
    assert b.learn_user(other, True, "alice") == QUEUED  # the same click again is not queued twice
    st = b.users.status()
    assert st.outage and st.outages == 1 and st.queued == 1 and st.errors >= 1 and st.stale_reads >= 5
    down = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(down) == 1  # logged once per outage, not per message
    shared.restart(server)
    _wait(lambda: b.score(ham, user="alice") is not None and b.users.status().queued == 0, timeout=10.0)
    assert not b.users.status().outage and b.users.status().replayed == 1
    assert a.score(other, user="alice").log_odds > site_other + 1.0  # node A sees the replayed learn
    assert a.score(ham, user="alice").user_spam == 2  # the first learn survived the restart too
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_hung_redis_holds_scoring_up_for_at_most_the_timeout(shared, tmp_path, mail):
    b = _node(shared, tmp_path, "b")
    ham = mail[0][0]
    assert b.learn_user(ham, True, "alice") == "learned"
    known = b.score(ham, user="alice").log_odds
    server = shared.server_of("alice")
    server.pause()  # accepts connections, answers nothing
    try:
        times = []
        for _ in range(12):
            start = time.monotonic()
            v = b.score(ham, user="alice")
            times.append(time.monotonic() - start)
            assert v.user_stale and v.log_odds == known
            time.sleep(0.05)
        # timeout 0.25 s: one message per retry_every (0.2 s) waits it, the others not at all
        assert max(times) < 0.6, times
        assert sorted(times)[len(times) // 2] < 0.1, times
        assert b.learn_user(mail[0][3], True, "alice") == QUEUED
    finally:
        server.resume()
    _wait(lambda: b.score(ham, user="alice") is not None and b.users.status().queued == 0, timeout=10.0)
    assert b.learn_user(mail[0][3], True, "alice") == "already-learned"


def test_with_no_redis_at_all_learns_queue_up_to_the_bound_and_then_refuse(tmp_path, mail, capsys):
    from conftest import free_port

    from mailsift.cli import main
    from mailsift.store.redis import redact

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "{url}"\nqueue = "{tmp_path / "q.jsonl"}"\nqueue_max = 1\n')
    first, second = tmp_path / "1.eml", tmp_path / "2.eml"
    first.write_bytes(mail[1][0])
    second.write_bytes(mail[1][1])
    assert main(["learn", "--config", str(cfg), "--spam", "--user", "alice", str(first)]) == 0
    assert "queued as spam for alice" in capsys.readouterr().out
    assert main(["learn", "--config", str(cfg), "--spam", "--user", "alice", str(second)]) == 75
    err = capsys.readouterr().err
    assert "store.queue_max" in err and "s3cret" not in err
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 1
    assert main(["score", "--config", str(cfg), "--user", "alice", str(first)]) in (0, 1)  # scored anyway
    assert "s3cret" not in capsys.readouterr().err
    assert redact(url) == url.replace("s3cret", "***")


def test_learns_queued_by_a_process_that_is_gone_are_replayed_by_any_node_once_and_only_once(
    redis_server, tmp_path, mail
):
    shared = Shared(redis_server.url, "redis", [redis_server])
    queue = tmp_path / "shared-queue.jsonl"
    config = _config(shared, tmp_path, "a")
    config.store = replace(config.store, queue=str(queue))
    redis_server.stop(save=True)
    gone = Filter(config, users=Users.open(config))
    assert gone.learn_user(mail[1][2], True, "alice") == QUEUED
    del gone  # the process that queued it ends before Redis is back
    redis_server.start()
    other = Filter(config, users=Users.open(config))  # a new process, same queue file
    _wait(lambda: other.score(mail[1][2], user="alice").user_spam == 1, timeout=10.0)
    _wait(lambda: not queue.read_text().strip(), timeout=5.0)
    assert other.learn_user(mail[1][2], True, "alice") == "already-learned"
    assert other.users.replay() == 0


def test_a_redis_on_a_unix_socket(tmp_path, mail):
    sock = tmp_path / "redis.sock"
    args = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait(sock.exists, timeout=10.0)
        config = Config()
        config.store = replace(config.store, url=f"unix://{sock}", queue=str(tmp_path / "q.jsonl"))
        flt = Filter(config, users=Users.open(config))
        assert flt.learn_user(mail[1][0], True, "alice") == "learned"
        assert flt.score(mail[1][0], user="alice").user_spam == 1
        assert not flt.users.status().outage
    finally:
        proc.kill()
        proc.wait(10)


def test_the_scoring_pool_scores_with_a_users_model_from_its_own_store_client(redis_server, tmp_path, mail):
    import asyncio

    from mailsift.proxy import Scorer

    shared = Shared(redis_server.url, "redis", [redis_server])
    config = _config(shared, tmp_path, "pool")
    learner = _node(shared, tmp_path, "learner")
    ham = mail[0][0]
    assert learner.learn_user(ham, True, "alice") == "learned"
    scorer = Scorer(config, None, workers=1)  # a real worker process (forkserver)
    try:

        async def both():
            return (
                await scorer.score(ham, 20.0, None, "alice"),
                await scorer.score(ham, 20.0, None, "bob"),
                await scorer.score(ham, 20.0),
            )

        alice, bob, site = asyncio.run(both())
    finally:
        scorer.close()
    assert alice.user == "alice" and alice.user_spam == 1 and alice.log_odds > site.log_odds + 1.0
    assert bob.log_odds == site.log_odds and bob.user == "bob" and site.user == ""


def test_a_site_learn_from_the_command_line_goes_to_the_store_not_the_model_file(
    redis_server, tmp_path, mail
):
    """``mailsift learn`` with ``[store] url`` and no service running: the
    site's learn lands in the store (every node's next verdict has it); the
    model file is only read, and evaluation still measures the model alone."""
    config = Config()
    config.store = replace(config.store, url=redis_server.url, queue=str(tmp_path / "q.jsonl"))
    node = Filter(config, users=Users.open(config))
    alone = Filter(config, users=Users.open(config), shared_site=False)
    ham = mail[0][1]
    before = node.score(ham)
    assert before.site_learned and before.site_log_odds == 0.0
    model_bytes = node.model_path.read_bytes()

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "{redis_server.url}"\nqueue = "{tmp_path / "cli-queue.jsonl"}"\n')
    msg = tmp_path / "m.eml"
    msg.write_bytes(ham)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "engine"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
    }
    env.pop("MAILSIFT_CONFIG", None)
    run = [sys.executable, "-m", "mailsift.cli", "--config", str(cfg)]
    out = subprocess.run([*run, "learn", "--spam", str(msg)], capture_output=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert b"(for the site, in the shared store)" in out.stdout
    after = node.score(ham)
    assert after.site_spam == 1 and after.log_odds > before.log_odds + 1.0
    assert node.learn_site(ham, True) == "already-learned"
    assert alone.score(ham).log_odds == before.log_odds  # shared_site=False: the model alone
    assert node.model_path.read_bytes() == model_bytes and not list((tmp_path / "data").rglob("*.npz"))
    undo = subprocess.run([*run, "unlearn", "--spam", str(msg)], capture_output=True, env=env, timeout=120)
    assert undo.returncode == 0 and b"unlearned as spam (for the site, in the shared store)" in undo.stdout
    assert node.score(ham).log_odds == pytest.approx(before.log_odds, abs=1e-9)


def test_a_site_learn_that_does_not_wait_answers_queued_and_lands_in_the_store(
    redis_server, tmp_path, mail, small_model
):
    """``learn(wait=False)`` with ``[store] url`` answers queued at once (as
    the model-file learner does for IMAPSieve's ``--no-wait``); the learn runs
    on in a thread and lands in the store; the model file is not written."""
    import asyncio

    from mailsift.serve import Service

    config = Config()
    config.store = replace(config.store, url=redis_server.url, queue=str(tmp_path / "q.jsonl"))
    model_bytes = small_model.read_bytes()
    raws = mail[1][:3]

    async def go():
        service = Service(config, str(small_model), workers=-1)
        try:
            return [await service.learn(raw, True, wait=False) for raw in raws]
        finally:
            await service.close()

    assert asyncio.run(go()) == ["queued"] * 3
    node = Filter(config, str(small_model), users=Users.open(config))
    assert all(node.learn_site(raw, True) == "already-learned" for raw in raws)
    assert node.score(raws[0]).site_spam == 3
    assert small_model.read_bytes() == model_bytes


def _rejected(config: Config) -> list[dict]:
    path = Path(config.store.queue + ".rejected")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_torn_line_in_the_learn_queue_is_set_aside_and_the_good_learns_are_replayed(
    redis_server, tmp_path, mail
):
    """A crash mid-append leaves half a line in the queue file: it must not
    stop the learns around it, nor fail a learn queued after it."""
    node = _node(Shared(redis_server.url, "redis", [redis_server]), tmp_path, "a")
    config = node.config
    ham = mail[0]
    assert node.learn_user(ham[0], True, "alice") == "learned"
    site = node.score(ham[1], user="alice").log_odds
    redis_server.stop(save=True)
    queue = Path(config.store.queue)
    queue.write_text('{"user": "alice", "space": "abc"\n')  # torn: a crash mid-append
    assert node.learn_user(ham[1], True, "alice") == QUEUED  # queued after the torn line
    assert node.learn_user(ham[2], True, "bob") == QUEUED
    redis_server.start()
    _wait(lambda: node.users.replay() >= 0 and node.users.status().queued == 0, timeout=10.0)
    st = node.users.status()
    assert st.replayed == 2 and st.rejected == 1
    rejected = _rejected(config)
    assert [r["line"] for r in rejected] == ['{"user": "alice", "space": "abc"']
    assert "line 1" in rejected[0]["why"]
    assert node.score(ham[1], user="alice").log_odds > site + 1.0  # the good learn landed
    assert node.learn_user(ham[2], True, "bob") == "already-learned"


def test_a_redis_out_of_memory_keeps_the_queue_and_a_learn_it_refuses_for_good_is_set_aside(
    redis_server, tmp_path, mail
):
    """Redis answers but refuses every write for now (``OOM`` under
    maxmemory): that passes, so the queued learns wait (and a new click
    queues) until it takes them.  A learn refused for itself (a key of
    another type) goes to ``<queue>.rejected`` with why, and neither the
    replay nor the next click fails."""
    node = _node(Shared(redis_server.url, "redis", [redis_server]), tmp_path, "a")
    config = node.config
    ham = mail[0]
    assert node.learn_user(ham[0], True, "alice") == "learned"
    redis_server.stop(save=True)
    assert node.learn_user(ham[1], True, "alice") == QUEUED
    assert node.learn_user(ham[2], True, "carol") == QUEUED
    redis_server.start()
    redis_server.cli("CONFIG", "SET", "maxmemory", "1")  # every write refused: OOM
    time.sleep(0.3)  # past retry_every: the store is asked again
    assert node.users.replay() == 0
    assert node.learn_user(ham[5], True, "bob") == QUEUED  # a click under OOM waits too
    node.score(ham[6], user="bob")  # a score under OOM answers from Redis (reads pass)
    st = node.users.status()
    assert (st.queued, st.rejected, st.replayed) == (3, 0, 0)
    assert not Path(config.store.queue + ".rejected").exists()
    redis_server.cli("CONFIG", "SET", "maxmemory", "0")
    _wait(lambda: node.users.replay() >= 0 and node.users.status().queued == 0, timeout=10.0)
    st = node.users.status()
    assert (st.replayed, st.rejected) == (3, 0)
    assert node.learn_user(ham[5], True, "bob") == "already-learned"

    # a key of another type where dave's state lives: WRONGTYPE for his queued learn only
    redis_server.stop(save=True)
    assert node.learn_user(ham[3], True, "dave") == QUEUED
    redis_server.start()
    redis_server.cli("SET", "mailsift:{dave}:m", "not a hash")
    time.sleep(0.3)  # past retry_every: the store is asked again
    # replays first (or a replay the store's recovery started does): dave's is set aside
    assert node.learn_user(ham[4], True, "bob") == "learned"
    _wait(lambda: node.users.replay() >= 0 and node.users.status().queued == 0, timeout=10.0)
    assert node.users.status().rejected == 1
    assert "WRONGTYPE" in _rejected(config)[-1]["why"]
    line = _rejected(config)[-1]["line"]
    assert QueuedLearn.from_json(line).user == "dave"  # kept whole, to replay by hand

    # by hand, as the README says: fix the key, append the line to the queue, replay
    redis_server.cli("DEL", "mailsift:{dave}:m")
    with open(config.store.queue, "a") as fh:
        fh.write(line + "\n")
    assert node.users.replay() == 1
    assert node.learn_user(ham[3], True, "dave") == "already-learned"


def test_a_replayed_click_older_than_the_ledger_entry_is_superseded(redis_server, tmp_path, mail, caplog):
    """Alice clicks Junk on node A during an outage (queued), then Not Junk
    on node B once Redis is back; A replays afterwards: her later click wins."""
    shared = Shared(redis_server.url, "redis", [redis_server])
    a, b = _node(shared, tmp_path, "a"), _node(shared, tmp_path, "b")
    m, newer = mail[0][2], mail[0][3]
    redis_server.stop(save=True)
    assert a.learn_user(m, True, "alice") == QUEUED
    assert a.learn_user(newer, True, "alice") == QUEUED  # a click nobody overrode
    redis_server.start()
    time.sleep(0.3)
    assert b.learn_user(m, False, "alice") == "learned"
    caplog.set_level(logging.WARNING, logger="mailsift.users")
    assert a.users.replay() == 2
    v = b.score(m, user="alice")
    assert (v.user_ham, v.user_spam) == (1, 1)  # m stays ham; the other queued click landed as spam
    assert b.learn_user(m, False, "alice") == "already-learned"
    assert b.learn_user(newer, True, "alice") == "already-learned"
    assert any("superseded" in r.getMessage() for r in caplog.records)


def test_a_learn_queued_after_a_torn_line_without_a_newline_is_not_swallowed(redis_server, tmp_path, mail):
    """A crash mid-append leaves a fragment with no newline: the next learn
    queued must start a line of its own, so it lands and only the fragment
    is set aside."""
    node = _node(Shared(redis_server.url, "redis", [redis_server]), tmp_path, "a")
    config = node.config
    ham = mail[0]
    assert node.learn_user(ham[0], True, "alice") == "learned"
    redis_server.stop(save=True)
    queue = Path(config.store.queue)
    assert node.learn_user(ham[1], True, "bob") == QUEUED
    item = QueuedLearn.from_json(queue.read_text())
    queue.write_text('{"user": "alice", "space": "ab')  # torn, no trailing newline
    assert node.users.queue.put(item)  # appended by a process that did not replay first
    redis_server.start()
    _wait(lambda: node.users.replay() >= 0 and node.users.status().queued == 0, timeout=10.0)
    st = node.users.status()
    assert (st.replayed, st.rejected) == (1, 1)
    assert [r["line"] for r in _rejected(config)] == ['{"user": "alice", "space": "ab']
    assert node.learn_user(ham[1], True, "bob") == "already-learned"


def test_a_queued_learn_whose_ledger_entry_is_garbage_is_set_aside_and_the_next_user_lands(
    redis_server, tmp_path, mail
):
    """A ledger field Redis holds but mailsift cannot read (edited by hand):
    dave's learn is refused with a StoreError and set aside at replay;
    erin's learn queued behind it lands."""
    import redis

    node = _node(Shared(redis_server.url, "redis", [redis_server]), tmp_path, "a")
    config = node.config
    ham = mail[0]
    assert node.learn_user(ham[0], True, "carol") == "learned"
    redis_server.stop(save=True)
    assert node.learn_user(ham[1], True, "dave") == QUEUED
    assert node.learn_user(ham[2], True, "erin") == QUEUED
    queue = Path(config.store.queue)
    dave = QueuedLearn.from_json(queue.read_text().splitlines()[0])
    with open(queue, "a") as fh:
        fh.write("[" * 100_000 + "\n")  # json.loads raises RecursionError, not ValueError
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.hset(f"mailsift:{{dave}}:l:{node.users._space(dave.space)}", dave.digest, b"garbage")
    _wait(lambda: node.users.replay() >= 0 and node.users.status().queued == 0, timeout=10.0)
    st = node.users.status()
    assert (st.replayed, st.rejected) == (1, 2)
    deep, rejected = _rejected(config)
    assert "RecursionError" in deep["why"]
    assert QueuedLearn.from_json(rejected["line"]).user == "dave"
    assert "corrupt ledger entry" in rejected["why"]
    assert node.learn_user(ham[2], True, "erin") == "already-learned"
