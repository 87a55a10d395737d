"""In-process scoring throughput of ``Filter.score`` on one core.

Trains a model (full profile) on the fixed training split, then scores the
test split with the model loaded once and no network rules, pinned to one
CPU.  Prints training time, msgs/s, p50/p99 per-message latency and peak RSS,
and, as a same-run baseline, the speed of the stdlib parser alone
(``email.message_from_bytes``) on the same messages, so the figures can be
compared across noisy machines as a ratio.

    python benchmarks/throughput.py [--datasets ../shared/datasets] [--repeat 3]
"""

from __future__ import annotations

import argparse
import email
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

from mailsift import Filter  # noqa: E402
from mailsift.corpus import read_index  # noqa: E402
from mailsift.train import PROFILES, collect, fit_model, labelled_stream  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed passes over the test split (median reported)"
    )
    ap.add_argument("--profile", default="full", choices=sorted(PROFILES))
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sa = Path(args.datasets) / "spamassassin"
    profile = PROFILES[args.profile]
    settings = profile.features

    t0 = time.perf_counter()
    ts = collect(labelled_stream(index=read_index(sa / "train.index")), settings, show_progress=False)
    model, report = fit_model(ts, settings, profile.params)
    train_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.npz"
        model.save(path)
        flt = Filter(model_path=str(path))
    raws = [it.read() for it in read_index(sa / "test.index")]

    flt.score(raws[0])  # warm up imports and caches
    runs, base_runs, latencies = [], [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        for raw in raws:
            email.message_from_bytes(raw)
        base_runs.append(len(raws) / (time.perf_counter() - t))
        lat = []
        t = time.perf_counter()
        for raw in raws:
            s = time.perf_counter()
            flt.score(raw, evidence=0)
            lat.append(time.perf_counter() - s)
        runs.append(len(raws) / (time.perf_counter() - t))
        latencies = lat
    latencies.sort()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    msgs_s = statistics.median(runs)
    base_s = statistics.median(base_runs)
    explain_t = time.perf_counter()
    for raw in raws[:500]:
        flt.score(raw, evidence=8)
    explain_s = 500 / (time.perf_counter() - explain_t)

    print(
        f"training ({args.profile} profile, {report.n_ham} ham + {report.n_spam} spam, "
        f"reading included): {train_s:.1f} s"
    )
    print(f"scoring {len(raws)} messages x {args.repeat} on one core")
    print(f"  Filter.score            {msgs_s:8.0f} msgs/s (median of {args.repeat})")
    print(f"  with evidence named     {explain_s:8.0f} msgs/s")
    print(
        f"  latency p50 / p99       {1000 * latencies[len(latencies) // 2]:.2f} / "
        f"{1000 * latencies[int(len(latencies) * 0.99)]:.2f} ms"
    )
    print(f"  peak RSS                {rss_mb:.0f} MiB")
    print(f"baseline: stdlib email.message_from_bytes {base_s:8.0f} msgs/s")
    print(f"ratio: Filter.score takes {base_s / msgs_s:.1f}x the time of a bare stdlib parse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
