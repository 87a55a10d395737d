#!/usr/bin/env python3
"""What the step's ``max_erosion`` costs online and what it does to a click, in one run.

    PYTHONPATH=engine python benchmarks/click_safety.py online [--data DIR] [--index train] VALUE...
    PYTHONPATH=engine MAILSIFT_DATASETS=... python benchmarks/click_safety.py clicks [--ham choose] VALUE...

``online``: the model alone (read, features, margin, step) over trec07p-dev
``--index`` (``train``: train.index, for choosing; ``all``: all.index, the
reported figure) in order with ``max_erosion`` = each VALUE (0: no limit),
(1-AUC)%.
``clicks``: the five-click scenario of tests/test_accuracy.py (a model trained,
with that VALUE, on 300 ham + 150 spam of the 2002 train split; the five spam
of the rest of the split it scores lowest learned one at a time with
``mailsift learn --spam``), each click's rise of the ham false-positive rate.
``--ham choose``: on the 1,775 ham of the train split the model was not
trained on (what the value was chosen on); ``--ham test``: on the 2,075 ham
of the test half (the bar's figure, reported once).  ``--scenario 2`` trains
on the next 300 ham + 150 spam instead (ham[300:600], spam[150:300]; clicks
from spam[300:], FPR on ham[600:]): a second draw inside the train split.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _with(value: float):
    from mailsift.model import TrainParams
    from mailsift.tokens import FeatureSettings
    from mailsift.train import PROFILES, Profile

    PROFILES["full"] = Profile(FeatureSettings(), TrainParams(max_erosion=value))  # what `train` reads
    return PROFILES["full"]


def online(data: Path, index: str, values: list[float]) -> None:
    from learner import _metrics, mailsift_learner_online

    from mailsift.corpus import read_index

    items = read_index(data / f"{index}.index")
    for value in values:
        profile = _with(value)
        scores, secs = mailsift_learner_online(items, profile.features, profile.params)
        auc, caught = _metrics([i.spam for i in items], scores)
        print(
            f"online {index}.index max_erosion={value:g}: (1-AUC)% {auc:.4f}  caught@0.1% {caught:.2f}  "
            f"{len(items) / secs:,.0f} msg/s",
            flush=True,
        )


def clicks(which: str, scenario: int, values: list[float]) -> None:
    from mailsift import Filter
    from mailsift.cli import main
    from mailsift.config import Config
    from mailsift.corpus import read_index
    from mailsift.model import LinearModel
    from mailsift.tokens import extract_bytes

    sa = Path(os.environ.get("MAILSIFT_DATASETS", "/work/shared/datasets")) / "spamassassin"
    train = read_index(sa / "train.index")
    ham = [i for i in train if not i.spam]
    spam = [i for i in train if i.spam]
    if scenario == 2:
        trained, unseen_ham, rest = ham[300:600] + spam[150:300], ham[600:], spam[300:]
    else:
        trained, unseen_ham, rest = ham[:300] + spam[:150], ham[300:], spam[150:]
    if which == "test":
        unseen_ham = [i for i in read_index(sa / "test.index") if not i.spam]
    hams = [i.read() for i in unseen_ham]
    rest_raw = [i.read() for i in rest]
    config = Config()
    config.dnsbl = []
    config.auth.enabled = False

    def fpr(path: Path) -> float:
        flt = Filter(config, model_path=str(path))
        return 100 * float(np.mean([flt.score(raw, evidence=0).is_spam for raw in hams]))

    def quiet(argv: list[str]) -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(argv) == 0, argv

    print(f"clicks: scenario {scenario}, FPR on {len(hams)} ham ({which})", flush=True)
    for value in values:
        _with(value)
        folder = Path(tempfile.mkdtemp(prefix="clicks-"))
        index = folder / "small.index"
        index.write_text("".join(f"{'spam' if i.spam else 'ham'} {i.path.resolve()}\n" for i in trained))
        path = folder / "model.npz"
        quiet(["train", "--index", str(index), "--model", str(path)])
        model = LinearModel.load(path)
        margins = [model.margin(extract_bytes(raw, model.settings).vec) for raw in rest_raw]
        paths = []
        for k, j in enumerate(np.argsort(margins)[:5]):
            p = folder / f"click{k}.eml"
            p.write_bytes(rest_raw[j])
            paths.append(p)
        before = start = fpr(path)
        rises = []
        for p in paths:
            quiet(["learn", "--spam", str(p), "--model", str(path)])
            after = fpr(path)
            rises.append(after - before)
            before = after
        print(
            f"clicks max_erosion={value:g}: FPR {start:.2f}% -> {before:.2f}%, rises "
            + ", ".join(f"{r:+.2f}" for r in rises)
            + f"  (max {max(rises):+.2f})",
            flush=True,
        )
        shutil.rmtree(folder)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    opts = {"--data": "/var/tmp/trec07p", "--index": "train", "--ham": "choose", "--scenario": "1"}
    while rest[:1] and rest[0] in opts:
        opts[rest[0]], rest = rest[1], rest[2:]
    values = [float(v) for v in rest]
    if mode == "online":
        online(Path(opts["--data"]), opts["--index"], values)
    else:
        clicks(opts["--ham"], int(opts["--scenario"]), values)
