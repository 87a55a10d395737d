#!/usr/bin/env python3
"""What one step rule costs online and what it does to a click, in one run.

    PYTHONPATH=engine python benchmarks/click_safety.py online [--data /var/tmp/trec07p] CAP...
    PYTHONPATH=engine MAILSIFT_DATASETS=... python benchmarks/click_safety.py clicks CAP...

``online``: the model alone (read, features, margin, step) over trec07p-dev
all.index in order with ``max_move`` = each CAP (0: no limit), (1-AUC)%.
``clicks``: the five-click scenario of tests/test_accuracy.py (a model trained
on 300 ham + 150 spam of the 2002 train split, the five spam it scores lowest
learned with ``mailsift learn --spam``), each click's rise of the FPR on the
2002 test half's 2,075 ham, per CAP.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def online(data: Path, caps: list[float]) -> None:
    from learner import _metrics, mailsift_learner_online

    from mailsift.corpus import read_index
    from mailsift.model import TrainParams
    from mailsift.tokens import FeatureSettings

    items = read_index(data / "all.index")
    for cap in caps:
        scores, secs = mailsift_learner_online(items, FeatureSettings(), TrainParams(max_move=cap))
        auc, caught = _metrics([i.spam for i in items], scores)
        rate = len(items) / secs
        print(
            f"online max_move={cap:g}: (1-AUC)% {auc:.4f}  caught@0.1% {caught:.2f}  {rate:,.0f} msg/s",
            flush=True,
        )


def clicks(caps: list[float]) -> None:
    from mailsift import Filter
    from mailsift.cli import main
    from mailsift.config import Config
    from mailsift.corpus import read_index
    from mailsift.model import LinearModel
    from mailsift.tokens import extract_bytes

    sa = Path(os.environ.get("MAILSIFT_DATASETS", "/work/shared/datasets")) / "spamassassin"
    train = read_index(sa / "train.index")
    ham = [i for i in train if not i.spam][:300]
    spam = [i for i in train if i.spam]
    folder = Path(tempfile.mkdtemp(prefix="clicks-"))
    index = folder / "small.index"
    index.write_text("".join(f"{'spam' if i.spam else 'ham'} {i.path.resolve()}\n" for i in ham + spam[:150]))
    base = folder / "base.npz"
    assert main(["train", "--index", str(index), "--model", str(base)]) == 0
    model = LinearModel.load(base)
    rest = [i.read() for i in spam[150:]]
    margins = [model.margin(extract_bytes(raw, model.settings).vec) for raw in rest]
    paths = []
    for k, j in enumerate(np.argsort(margins)[:5]):
        p = folder / f"click{k}.eml"
        p.write_bytes(rest[j])
        paths.append(p)
    config = Config()
    config.dnsbl = []
    config.auth.enabled = False
    test_ham = [i.read() for i in read_index(sa / "test.index") if not i.spam]

    def fpr(path: Path) -> float:
        flt = Filter(config, model_path=str(path))
        return 100 * float(np.mean([flt.score(raw, evidence=0).is_spam for raw in test_ham]))

    for cap in caps:
        path = folder / f"cap{cap:g}.npz"
        m = LinearModel.load(base)
        m.params = replace(m.params, max_move=cap)
        m.save(path)
        before = start = fpr(path)
        rises = []
        for p in paths:
            assert main(["learn", "--spam", str(p), "--model", str(path)]) == 0
            after = fpr(path)
            rises.append(after - before)
            before = after
        print(
            f"clicks max_move={cap:g}: FPR {start:.2f}% -> {before:.2f}%, rises "
            + ", ".join(f"{r:+.2f}" for r in rises)
            + f"  (max {max(rises):+.2f})",
            flush=True,
        )
    shutil.rmtree(folder)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    data = Path("/var/tmp/trec07p")
    if rest[:1] == ["--data"]:
        data, rest = Path(rest[1]), rest[2:]
    caps = [float(c) for c in rest]
    online(data, caps) if mode == "online" else clicks(caps)
