#!/usr/bin/env python3
"""The learner against the TREC 2007 reference, in one run, on the same mail.

    PYTHONPATH=engine python benchmarks/learner.py [--data /var/tmp/trec07p] \
        [--speed-messages 5000] [--repeats 3] [--skip-accuracy]

The reference is ../shared/reference/olr_baseline.py, imported from where it
lies (never copied): its own ``feats`` and ``run`` do its work.  Messages are
read from the files in both (page cache after the first pass), as each
filter meets mail.

Accuracy (once, whole corpus), both protocols side by side:
  * online: ``all.index`` in order, score each message then learn it.
    mailsift runs :func:`mailsift.evaluate.score_online` with a fresh model,
    exactly what ``mailsift eval --online`` runs (model + rules, network
    rules off); the model alone is printed too.
  * split: train on ``train.index`` (``fit_model``, what ``eval --train``
    runs), score ``test.index`` with ``Filter.score``.

Speed (``--repeats`` times on the first ``--speed-messages`` of all.index;
medians, and the median of the per-repeat ratios):
  * online learning, score + learn: the reference's online ``run`` against
    mailsift's learner (read, features from the bytes, margin, step) and
    against the whole ``eval --online`` loop (parse + rules too);
  * scoring: the reference's scoring loop against ``Filter.score`` (parse,
    features, rules, model: the full verdict) with the split model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: ../shared/reference beside the repository (a git worktree sits one level deeper)
REFERENCES = [HERE.parent.parent / "shared" / "reference", HERE.parent.parent.parent / "shared" / "reference"]
REFERENCE = next((p for p in REFERENCES if (p / "olr_baseline.py").is_file()), REFERENCES[0])


def _import_reference():
    if not (REFERENCE / "olr_baseline.py").is_file():
        sys.exit(f"reference not found: {' or '.join(str(p) for p in REFERENCES)}")
    sys.path.insert(0, str(REFERENCE))
    try:
        import olr_baseline  # noqa: PLC0415  (lives outside the repository on purpose)
    finally:
        sys.path.pop(0)
    return olr_baseline


def _config():
    from mailsift.config import Config

    config = Config()
    config.dnsbl = []  # as eval runs: no live DNS on a corpus
    config.auth.enabled = False
    return config


def _metrics(labels, scores) -> tuple[float, float]:
    from mailsift.evaluate import one_minus_auc, spam_caught_at_fpr

    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    return 100 * one_minus_auc(y, s), 100 * spam_caught_at_fpr(y, s, 0.001)


def mailsift_learner_online(items, settings, params):
    """Score then learn each message with the model alone (the learner's
    speed): the same step as eval --online and mailsift learn."""
    from mailsift.model import LinearModel
    from mailsift.tokens import extract_bytes

    model = LinearModel(settings, params)
    scores = []
    start = time.perf_counter()
    for item in items:
        with open(item.path, "rb") as fh:
            vec = extract_bytes(fh.read(), settings).vec
        m = model.margin(vec)
        scores.append(m)
        model.step(vec, item.spam, margin=m)
        model._count(item.spam, 1)  # as partial_fit and eval --online: the step reads the counts
    return scores, time.perf_counter() - start


def mailsift_eval_online(items, settings, params):
    from mailsift import Filter
    from mailsift.evaluate import score_online
    from mailsift.model import LinearModel

    flt = Filter(_config(), model=LinearModel(settings, params))
    scored = score_online(flt, items)
    return scored.scores, scored.seconds


def mailsift_split(train_items, settings, params):
    from mailsift import Filter
    from mailsift.train import collect, fit_model, labelled_stream

    start = time.perf_counter()
    ts = collect(labelled_stream(index=train_items), settings, dedupe=False, show_progress=False)
    model, _ = fit_model(ts, settings, params)
    return Filter(_config(), model=model), time.perf_counter() - start


def filter_scores(flt, items):
    scores = []
    start = time.perf_counter()
    for item in items:
        with open(item.path, "rb") as fh:
            scores.append(flt.score(fh.read(), evidence=0).score)
    return scores, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/var/tmp/trec07p", help="unpacked trec07p-dev (unpack.sh DEST)")
    ap.add_argument("--speed-messages", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-accuracy", action="store_true", help="speed only")
    args = ap.parse_args()

    from mailsift import __version__
    from mailsift.corpus import read_index
    from mailsift.train import PROFILES

    ref = _import_reference()
    data = Path(args.data)
    profile = PROFILES["full"]
    settings, params = profile.features, profile.params
    all_items = read_index(data / "all.index")
    ref_all = ref.read_index(str(data / "all.index"))
    commit = os.popen(f"git -C {HERE.parent} rev-parse --short HEAD 2>/dev/null").read().strip()
    print(f"mailsift {__version__} (commit {commit or '?'}), reference {REFERENCE / 'olr_baseline.py'}")
    print(f"corpus {data}: {len(all_items)} messages; features {settings}; training {params}\n")

    # -- accuracy ----------------------------------------------------------
    if not args.skip_accuracy:
        rows = []
        y, s, _, secs = ref.run([], ref_all, True)
        rows.append(("online all.index", "reference", *_metrics(y, s), len(y) / secs))
        scores, secs = mailsift_learner_online(all_items, settings, params)
        labels = [it.spam for it in all_items]
        rows.append(("online all.index", "mailsift model", *_metrics(labels, scores), len(labels) / secs))
        scores, secs = mailsift_eval_online(all_items, settings, params)
        rows.append(
            ("online all.index", "mailsift eval --online", *_metrics(labels, scores), len(labels) / secs)
        )
        train, test = read_index(data / "train.index"), read_index(data / "test.index")
        y, s, ref_train_s, secs = ref.run(
            ref.read_index(str(data / "train.index")), ref.read_index(str(data / "test.index")), False
        )
        rows.append(("split train->test", "reference", *_metrics(y, s), len(y) / secs))
        flt, train_s = mailsift_split(train, settings, params)
        scores, secs = filter_scores(flt, test)
        rows.append(
            (
                "split train->test",
                "mailsift eval --train/--test",
                *_metrics([t.spam for t in test], scores),
                len(test) / secs,
            )
        )
        print("| protocol | filter | (1-AUC)% | spam caught at 0.1% FPR | msgs/s |")
        print("| --- | --- | ---: | ---: | ---: |")
        for proto, who, auc, caught, rate in rows:
            print(f"| {proto} | {who} | {auc:.4f} | {caught:.2f}% | {rate:,.0f} |")
        print(
            f"\nsplit training time: reference {ref_train_s:.1f} s (one pass), "
            f"mailsift {train_s:.1f} s (features, 3-fold CV for calibration, {params.epochs} passes)\n"
        )

    # -- speed -------------------------------------------------------------
    n = min(args.speed_messages, len(all_items))
    items, ref_items = all_items[:n], ref_all[:n]
    flt, _ = mailsift_split(items, settings, params)
    runs: dict[str, list[float]] = {
        k: [] for k in ("ref_online", "ms_learn", "ms_eval", "ref_score", "ms_score")
    }
    for _ in range(args.repeats):
        _, _, _, secs = ref.run([], ref_items, True)
        runs["ref_online"].append(n / secs)
        _, secs = mailsift_learner_online(items, settings, params)
        runs["ms_learn"].append(n / secs)
        _, secs = mailsift_eval_online(items, settings, params)
        runs["ms_eval"].append(n / secs)
        _, _, _, secs = ref.run(ref_items[:10], ref_items, False)
        runs["ref_score"].append(n / secs)
        _, secs = filter_scores(flt, items)
        runs["ms_score"].append(n / secs)
    med = {k: statistics.median(v) for k, v in runs.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(runs[a], runs[b]))

    print(f"speed, first {n} messages of all.index, {args.repeats} repeats (median msgs/s; median of ratios)")
    print("| what | reference | mailsift | ratio | bar |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| online score + learn (model) | {med['ref_online']:,.0f} | {med['ms_learn']:,.0f} | "
        f"{ratio('ms_learn', 'ref_online'):.2f}x | >= 0.5x |"
    )
    print(
        f"| online score + learn (eval --online: + parse, rules) | {med['ref_online']:,.0f} | "
        f"{med['ms_eval']:,.0f} | {ratio('ms_eval', 'ref_online'):.2f}x | |"
    )
    print(
        f"| scoring (Filter.score: parse, features, rules, model) | {med['ref_score']:,.0f} | "
        f"{med['ms_score']:,.0f} | {ratio('ms_score', 'ref_score'):.2f}x | >= 0.75x |"
    )
    print("runs: " + "; ".join(f"{k} " + ", ".join(f"{v:,.0f}" for v in vals) for k, vals in runs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
