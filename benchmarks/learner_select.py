#!/usr/bin/env python3
"""Choose the learner's settings on trec07p-dev/train.index alone.

    PYTHONPATH=engine FIT=5000 VAL0=12855 python benchmarks/learner_select.py \
        '[{}, {"tr": {"epochs": 6}}, {"tp": {"rate": 0.002}}, {"fs": {"ngram_bytes": 3000}}]'

An inner chronological split of ``train.index`` (never ``test.index``): the
first ``FIT`` messages train (``LinearModel.step``, the one update rule, in
``epochs`` shuffled passes averaged as ``fit`` does, or in order), the
messages from ``VAL0`` on are scored; the default ``FIT=VAL0=half`` mirrors
the outer split, ``FIT=5000 VAL0=12855`` leaves a week between the two, as
the outer test half is later than its training half.  The TREC reference
runs on the same inner split.  Each config is JSON: ``fs`` FeatureSettings,
``tp`` TrainParams, ``tr`` {"order": "shuffle"|"inorder", "epochs": N,
"avg": "epoch"|"last"}.  Prints (1-AUC)% / spam caught at 0.1% FPR.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mailsift.corpus import read_index
from mailsift.evaluate import one_minus_auc, spam_caught_at_fpr
from mailsift.model import LinearModel, TrainParams
from mailsift.report import strip_verdict_headers
from mailsift.tokens import FeatureSettings, extract_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learner import _import_reference  # noqa: E402


def train(X, y, settings, params, order="shuffle", epochs=3, avg="epoch"):
    model = LinearModel(settings, params)
    total = np.zeros_like(model.w)
    rng = np.random.default_rng(params.seed)
    idx = np.arange(len(X))
    for _ in range(epochs):
        if order == "shuffle":
            rng.shuffle(idx)
        for i in idx:
            model.step(X[i], bool(y[i]))
        total += model.w
    return total / epochs if avg == "epoch" else model.w


def measure(w, X, y) -> tuple[float, float]:
    s = np.array([float(w.take(x[0]).sum()) for x in X])
    return 100 * one_minus_auc(y, s), 100 * spam_caught_at_fpr(y, s, 0.001)


def main() -> int:
    data = Path(os.environ.get("MAILSIFT_TREC07P", "/var/tmp/trec07p"))
    items = read_index(data / "train.index")
    n = len(items)
    fit, val0 = int(os.environ.get("FIT", n // 2)), int(os.environ.get("VAL0", n // 2))
    raws = [strip_verdict_headers(i.read()) for i in items]
    y = np.array([i.spam for i in items])
    print(f"train.index: {n}; fit on [0, {fit}), validate on [{val0}, {n})", flush=True)
    ref = _import_reference()
    pairs = [(int(i.spam), str(i.path)) for i in items]
    yr, sr, _, _ = ref.run(pairs[:fit], pairs[val0:], False)
    yr = yr.astype(bool)
    print(f"reference: {100 * one_minus_auc(yr, sr):.4f} / {100 * spam_caught_at_fpr(yr, sr, 0.001):.2f}%")
    key, X = None, None
    for config in json.loads(sys.argv[1]) if len(sys.argv) > 1 else [{}]:
        settings = FeatureSettings(**config.get("fs", {}))
        if settings != key:
            key, X = settings, [extract_bytes(r, settings).vec for r in raws]
        start = time.perf_counter()
        w = train(X[:fit], y[:fit], settings, TrainParams(**config.get("tp", {})), **config.get("tr", {}))
        auc, caught = measure(w, X[val0:], y[val0:])
        print(
            f"{json.dumps(config)}: {auc:.4f} / {caught:.2f}% ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
