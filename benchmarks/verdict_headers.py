"""Verdict headers and the model: does mailsift learn its own verdicts, and
can a forged ``X-Spam-Flag: NO`` steer it?  And what does removing them cost?

Accuracy (the bar of issue 9).  Model A is trained on the SpamAssassin train
split as it is; model B on the same split as ``mailsift serve`` delivers it:
each message scored by model A through ``Filter.score`` and given its
X-Spam-Flag/Score/Status and X-Mailsift-Report by ``report.add_headers`` (the
worst case: A's verdicts nearly are the labels).  Both score the clean test
split; then every test spam gets a forged ``X-Spam-Flag: NO`` and
``X-Spam-Status: No, ...`` and is scored again.  The whole protocol runs
twice in one process: with ``strip_verdict_headers`` replaced by the identity
(the code before it, the baseline) and as shipped.

Cost.  ``strip_verdict_headers`` on every test message (none carries a
filter's header after its own strip, so this is the fast path every clean
message takes), on the delivered form (the slow path), and ``Filter.score``
on the same messages for the ratio; then header names built to backtrack,
at three sizes, to show the time grows linearly.

    python benchmarks/verdict_headers.py [--datasets ../shared/datasets] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

import mailsift.filter  # noqa: E402
import mailsift.train  # noqa: E402
from mailsift.config import Config  # noqa: E402
from mailsift.corpus import read_index  # noqa: E402
from mailsift.evaluate import metrics  # noqa: E402
from mailsift.filter import Filter  # noqa: E402
from mailsift.report import add_headers, spam_headers, strip_verdict_headers  # noqa: E402
from mailsift.train import PROFILES, collect, fit_model  # noqa: E402

FORGED = b"X-Spam-Flag: NO\nX-Spam-Status: No, score=-3.2 required=5.0 tests=MAILSIFT_00\n"


def offline() -> Config:
    config = Config()
    config.dnsbl = []
    config.auth.enabled = False
    return config


def use_strip(on: bool) -> None:
    """Switch the strip in the score and training paths on or off."""
    fn = strip_verdict_headers if on else (lambda raw: raw)
    mailsift.filter.strip_verdict_headers = fn
    mailsift.train.strip_verdict_headers = fn


def forge(raw: bytes) -> bytes:
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    return FORGED.replace(b"\n", eol) + raw


def fit(stream):
    profile = PROFILES["full"]
    ts = collect(stream, profile.features, show_progress=False)
    model, _ = fit_model(ts, profile.features, profile.params)
    return model


def scores(model, raws) -> np.ndarray:
    flt = Filter(offline(), model=model)
    return np.array([flt.score(r, evidence=0).score for r in raws])


def protocol(train, test, threshold) -> dict:
    """(1-AUC)% of models A and B on clean test mail, and their miss rates on
    test spam with and without the forged headers."""
    train_raws = [(it.spam, str(it.path), it.read()) for it in train]
    test_raws = [it.read() for it in test]
    labels = np.array([it.spam for it in test])
    a = fit(train_raws)
    serve = Filter(offline(), model=a)
    delivered = [(s, n, add_headers(r, spam_headers(serve.score(r, evidence=3)))) for s, n, r in train_raws]
    b = fit(delivered)
    out = {}
    for name, model in (("A clean", a), ("B delivered", b)):
        clean = scores(model, test_raws)
        forged = scores(model, [forge(r) for r, s in zip(test_raws, labels) if s])
        m = metrics(labels, clean, threshold)
        out[name] = {
            "one_minus_auc_pct": m["one_minus_auc_pct"],
            "caught_at_0_1": m["spam_caught_pct_at_fpr_0_1"],
            "fpr_pct": m["fpr_pct"],
            "miss_pct": m["fnr_pct"],
            "miss_forged_pct": 100 * float((forged < threshold).mean()),
        }
    return out


def timed(fn, items, repeat) -> float:
    """Median seconds of ``repeat`` passes of fn over items."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--repeat", type=int, default=5, help="timed passes (median reported)")
    ap.add_argument(
        "--split",
        metavar="DIR",
        help="folder with train.index and test.index (default: DATASETS/spamassassin; "
        "e.g. /var/tmp/trec07p for the unpacked trec07p-dev)",
    )
    ap.add_argument("--no-cost", action="store_true", help="skip the timing part")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sa = Path(args.split) if args.split else Path(args.datasets) / "spamassassin"
    train, test = read_index(sa / "train.index"), read_index(sa / "test.index")
    threshold = offline().thresholds.add_header

    print(f"accuracy: {len(train)} train, {len(test)} test messages ({sa}), full profile")
    print(
        f"{'':22}{'model':>13}{'(1-AUC)%':>10}{'caught@0.1%':>13}{'FPR%':>7}{'miss%':>8}{'forged miss%':>14}"
    )
    results = {}
    for label, on in (("without strip (before)", False), ("with strip", True)):
        use_strip(on)
        t0 = time.perf_counter()
        results[label] = res = protocol(train, test, threshold)
        for name, m in res.items():
            print(
                f"{label:22}{name:>13}{m['one_minus_auc_pct']:10.4f}{m['caught_at_0_1']:13.2f}"
                f"{m['fpr_pct']:7.2f}{m['miss_pct']:8.2f}{m['miss_forged_pct']:14.2f}"
            )
        print(f"{'':22}({time.perf_counter() - t0:.0f} s)")
    res = results["with strip"]
    a, b = res["A clean"], res["B delivered"]
    ratio = b["one_minus_auc_pct"] / a["one_minus_auc_pct"] if a["one_minus_auc_pct"] else float("nan")
    print(f"bar: B/A (1-AUC) = {ratio:.2f} (must be <= 1.5)")
    for name, m in res.items():
        change = m["miss_forged_pct"] - m["miss_pct"]
        print(f"bar: {name}: forged headers change the miss rate by {change:+.2f} points")

    if args.no_cost:
        return 0
    use_strip(True)
    raws = [it.read() for it in test]
    serve = Filter(offline())
    delivered = [add_headers(r, spam_headers(serve.score(r, evidence=0))) for r in raws]
    n_verdict = sum(strip_verdict_headers(r) is not r for r in raws)
    clean = [strip_verdict_headers(r) for r in raws]
    t_fast = timed(strip_verdict_headers, clean, args.repeat)
    t_slow = timed(strip_verdict_headers, delivered, args.repeat)
    t_score = timed(lambda r: serve.score(r, evidence=0), raws, max(1, args.repeat // 2))
    n = len(raws)
    print(f"\ncost on one core, {n} test messages ({n_verdict} arrive with another filter's verdict header):")
    print(f"  strip, no verdict header (fast path)  {1e6 * t_fast / n:7.2f} us/msg")
    print(f"  strip, as serve delivers (slow path)  {1e6 * t_slow / n:7.2f} us/msg")
    print(f"  Filter.score (strip included)         {1e6 * t_score / n:7.2f} us/msg")
    print(
        f"  fast path = {100 * t_fast / t_score:.2f}% of a score; slow path = {100 * t_slow / t_score:.2f}%"
    )
    print("adversarial header names (X- + 'spam' * k + ': v', then a verdict header):")
    for k in (125_000, 250_000, 500_000):
        raw = b"Subject: x\nX-" + b"spam" * k + b": v\nX-Spam-Flag: NO\n\nbody"
        t = timed(strip_verdict_headers, [raw], 5)
        print(
            f"  {len(raw) / 1e6:5.2f} MB header  {1e3 * t:7.2f} ms  ({1e3 * t / (len(raw) / 1e6):.2f} ms/MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
