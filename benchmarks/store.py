"""Per-user state: the local store against a real Redis and a real 3-master
Redis Cluster, in one run.

For each backend: ``--learns`` spam/ham clicks for one user (per-learn
latency), then that user's share of the verdict for ``--messages`` messages
(the per-message store read, ``Users.view``), then whole ``Filter.score``
calls with and without the user (the baseline: the site model alone, same
messages, same run).  On Redis, then the site's own learns in the store
(``[store] url``: ``Filter.learn_site``, key ``%site``) and whole verdicts
that read them, without and with the user (site file + site delta + user
delta).  Redis work is counted two ways, neither with MONITOR:
round trips on the client (each ``RedisStore._call`` is one pipeline or one
script call) and commands on the server (``INFO commandstats``, reset before
each phase; a script's own HGET/HSET are counted there but cost no round
trip).  Memory: ``MEMORY USAGE`` of the user's keys after the learns, and the
local store's file sizes.

The servers are started here (``redis-server``, no persistence, loopback,
free ports) with the test suite's helpers (tests/conftest.py).

    python benchmarks/store.py [--messages 1000] [--learns 200] [--no-cluster]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import RedisCluster, RedisProc  # noqa: E402

from mailsift import Filter  # noqa: E402
from mailsift.config import Config  # noqa: E402
from mailsift.corpus import read_index  # noqa: E402
from mailsift.store import SITE_KEY  # noqa: E402
from mailsift.store.local import LocalStore  # noqa: E402
from mailsift.store.queue import LearnQueue  # noqa: E402
from mailsift.store.redis import RedisStore  # noqa: E402
from mailsift.train import message_digest  # noqa: E402
from mailsift.usermodel import UnitVec  # noqa: E402
from mailsift.users import Users  # noqa: E402


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def commandstats(servers) -> dict[str, int]:
    """Commands counted by the servers since the last reset (a script's own
    commands included)."""
    total: dict[str, int] = {}
    for server in servers:
        for line in server.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line.partition(":")
                name = name.removeprefix("cmdstat_")
                if name.startswith(("info", "config", "cluster", "command", "memory", "ping", "hello")):
                    continue
                total[name] = total.get(name, 0) + int(rest.split(",")[0].split("=")[1])
    return total


def cpu(servers) -> float:
    """Seconds of CPU the servers have used (user + system): what Redis
    spends on everything, networking and parsing included."""
    total = 0.0
    for server in servers:
        for line in server.cli("INFO", "cpu").splitlines():
            if line.startswith(("used_cpu_user:", "used_cpu_sys:")):
                total += float(line.split(":")[1])
    return total


def reset(servers) -> None:
    for server in servers:
        server.cli("CONFIG", "RESETSTAT")


class Counting(RedisStore):
    """RedisStore counting its round trips (one per ``_call``)."""

    trips = 0

    def _call(self, fn):
        self.trips += 1
        return super()._call(fn)


def run_backend(name, store, servers, flt, msgs, learns, folder) -> dict:
    users = Users(store, queue=LearnQueue(folder / f"{name}-queue.jsonl", 10_000) if store.remote else None)
    flt._users = users
    space = flt.space
    feats = [flt.features(raw)[1] for raw, _ in msgs]
    site = [flt.site_log_odds(f) for f in feats]
    digests = [message_digest(raw) for raw, _ in msgs]
    out: dict = {"backend": name}

    # learns: one user clicks `learns` messages
    reset(servers)
    cpu0 = cpu(servers)
    trips0 = getattr(store, "trips", 0)
    times = []
    for k in range(learns):
        t = time.perf_counter()
        outcome = users.learn("alice", feats[k].vec, site[k], msgs[k][1], digests[k], space)
        times.append(time.perf_counter() - t)
        assert outcome == "learned", outcome
    out["learn_p50_ms"] = statistics.median(times) * 1e3
    out["learn_p99_ms"] = pct(times, 0.99) * 1e3
    out["learns_per_s"] = learns / sum(times)
    if servers:
        out["learn_trips"] = (store.trips - trips0) / learns
        out["learn_redis_cpu_ms"] = (cpu(servers) - cpu0) / learns * 1e3
        stats = commandstats(servers)
        out["learn_commands"] = {k: round(v / learns, 1) for k, v in sorted(stats.items())}

    # the per-message read of the user's share
    reset(servers)
    cpu0 = cpu(servers)
    trips0 = getattr(store, "trips", 0)
    times = []
    for f in feats:
        t = time.perf_counter()
        users.view("alice", f.vec, space)
        times.append(time.perf_counter() - t)
    out["read_p50_ms"] = statistics.median(times) * 1e3
    out["read_p99_ms"] = pct(times, 0.99) * 1e3
    out["reads_per_s"] = len(feats) / sum(times)
    if servers:
        out["read_trips"] = (store.trips - trips0) / len(feats)
        out["read_redis_cpu_ms"] = (cpu(servers) - cpu0) / len(feats) * 1e3
        stats = commandstats(servers)
        out["read_commands"] = {k: round(v / len(feats), 2) for k, v in sorted(stats.items())}

    # whole verdicts, with and without the user (same messages, interleaved)
    with_user, without = [], []
    for raw, _ in msgs:
        t = time.perf_counter()
        flt.score(raw, evidence=0)
        without.append(time.perf_counter() - t)
        t = time.perf_counter()
        flt.score(raw, evidence=0, user="alice")
        with_user.append(time.perf_counter() - t)
    out["score_site_p50_ms"] = statistics.median(without) * 1e3
    out["score_user_p50_ms"] = statistics.median(with_user) * 1e3
    out["score_user_msgs_per_s"] = len(msgs) / sum(with_user)
    out["score_site_msgs_per_s"] = len(msgs) / sum(without)

    if servers:  # [store] url: the site's learns in the store, read by every verdict
        # the shipped default was trained on these messages: without its ledger they are new
        # to the site (the ledger is only looked up; the store's work is the same either way)
        flt.model.ledger.digests.clear()
        reset(servers)
        cpu0, trips0 = cpu(servers), store.trips
        times = []
        for k in range(learns):
            t = time.perf_counter()
            outcome = flt.learn_site(msgs[k][0], msgs[k][1])
            times.append(time.perf_counter() - t)
            assert outcome == "learned", outcome
        out["site_learn_p50_ms"] = statistics.median(times) * 1e3
        out["site_learn_trips"] = (store.trips - trips0) / learns
        out["site_learn_redis_cpu_ms"] = (cpu(servers) - cpu0) / learns * 1e3
        stats = commandstats(servers)
        out["site_learn_commands"] = {k: round(v / learns, 1) for k, v in sorted(stats.items())}
        flt.shared_site = True
        shared_site, shared_user = [], []
        reset(servers)
        cpu0, trips0 = cpu(servers), store.trips
        for raw, _ in msgs:
            t = time.perf_counter()
            flt.score(raw, evidence=0)
            shared_site.append(time.perf_counter() - t)
        out["score_shared_site_trips"] = (store.trips - trips0) / len(msgs)
        out["score_shared_site_redis_cpu_ms"] = (cpu(servers) - cpu0) / len(msgs) * 1e3
        trips0 = store.trips
        for raw, _ in msgs:
            t = time.perf_counter()
            flt.score(raw, evidence=0, user="alice")
            shared_user.append(time.perf_counter() - t)
        out["score_shared_user_trips"] = (store.trips - trips0) / len(msgs)
        flt.shared_site = False
        out["score_shared_site_p50_ms"] = statistics.median(shared_site) * 1e3
        out["score_shared_user_p50_ms"] = statistics.median(shared_user) * 1e3
        out["score_shared_site_msgs_per_s"] = len(msgs) / sum(shared_site)
        out["score_shared_user_msgs_per_s"] = len(msgs) / sum(shared_user)
        skey = f"mailsift:{{{SITE_KEY}}}:d:{users._space(space)}"
        out["site_delta_slots"] = int(store._client.hlen(skey))

    # memory of the user's state after the learns
    space = users._space(space)  # the store's name: feature space and sampling
    if servers:
        client = store._client
        keys = [f"mailsift:{{alice}}:d:{space}", f"mailsift:{{alice}}:l:{space}", "mailsift:{alice}:m"]
        mem = [int(client.memory_usage(k, samples=0) or 0) for k in keys]
        out["delta_bytes"], out["ledger_bytes"], out["meta_bytes"] = mem
        out["delta_slots"] = int(client.hlen(keys[0]))
    else:
        files = list((store.path / "alice").glob("*"))
        out["delta_bytes"] = sum(f.stat().st_size for f in files if f.suffix == ".npz")
        out["ledger_bytes"] = out["meta_bytes"] = 0
        out["delta_slots"] = len(store._state("alice", space).slots)
    out["bytes_per_slot"] = out["delta_bytes"] / max(out["delta_slots"], 1)
    out["bytes_per_learn"] = (out["delta_bytes"] + out["ledger_bytes"]) / learns
    out["slots_per_message"] = float(np.mean([len(f.indices) for f in feats]))
    out["slots_read_per_message"] = float(
        np.mean([len(UnitVec.of(f.vec, users.params.sample).slots) for f in feats])
    )
    users.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.environ.get("MAILSIFT_DATASETS", str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--datasets", default=default)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--learns", type=int, default=200)
    ap.add_argument("--no-cluster", action="store_true")
    args = ap.parse_args()
    items = read_index(Path(args.datasets) / "spamassassin" / "test.index")
    ham = [i for i in items if not i.spam]
    spam = [i for i in items if i.spam]
    mixed = [x for pair in zip(ham, spam) for x in pair][: args.messages]
    msgs = [(i.path.read_bytes(), i.spam) for i in mixed]
    flt = Filter(Config())
    folder = Path(tempfile.mkdtemp(prefix="mailsift-store-bench-"))
    results = []
    results.append(run_backend("local", LocalStore(folder / "users"), [], flt, msgs, args.learns, folder))
    server = RedisProc(folder / "redis")
    try:
        store = Counting(f"redis://127.0.0.1:{server.port}/0")
        results.append(run_backend("redis", store, [server], flt, msgs, args.learns, folder))
    finally:
        server.close()
    if not args.no_cluster:
        cluster = RedisCluster(folder / "cluster")
        try:
            store = Counting(cluster.url)
            results.append(run_backend("cluster", store, cluster.nodes, flt, msgs, args.learns, folder))
        finally:
            cluster.close()
    print(f"{len(msgs)} messages scored, {args.learns} learned, one user; medians")
    keys = [k for k in results[0] if k != "backend"]
    keys += [k for r in results for k in r if k not in keys and k != "backend"]
    print(f"{'':24}" + "".join(f"{r['backend']:>22}" for r in results))
    for k in dict.fromkeys(keys):
        row = []
        for r in results:
            v = r.get(k, "")
            row.append(f"{v:>22.3f}" if isinstance(v, float) else f"{str(v):>22}")
        print(f"{k:24}" + "".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
