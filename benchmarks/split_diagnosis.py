#!/usr/bin/env python3
"""Which test messages decide the trec07p-dev split, for mailsift and the reference.

    PYTHONPATH=engine python benchmarks/split_diagnosis.py [--data /var/tmp/trec07p] \
        [--top 10] [--ngram-bytes N]

A diagnosis, run after the fact on ``test.index``: never a way to choose a
setting (those are chosen on ``train.index``; models/default/README.md).  Both
learners train on ``train.index`` (mailsift: ``fit_model``, what ``eval
--train`` runs; the reference: its own ``run``) and score ``test.index``
(mailsift: the model's margin alone, no rules).  At (1-AUC)% near 0.02 a
whole protocol's figure rests on a handful of ham ranked among the spam, so
this prints, for each learner, the highest-scored ham with how many spam
score below each (its share of the misordered pairs) and what it is, and
(1-AUC)% with the top k ham left out.  ``--ngram-bytes`` overrides the
feature window to show how the figure moves with it.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learner import _import_reference, _metrics  # noqa: E402


def _describe(path: str) -> str:
    with open(path, "rb") as fh:
        head = fh.read(20000).split(b"\n\n", 1)[0]
    out = []
    for name in (b"list-id", b"from", b"subject"):
        m = re.search(rb"(?im)^" + name + rb":[ \t]*(.*)$", head)
        if m:
            out.append(f"{name.decode()}: {m.group(1)[:60].decode('latin-1')}")
    return "; ".join(out)


def _tops(name: str, y: np.ndarray, s: np.ndarray, paths: list[str], top: int) -> None:
    from mailsift.evaluate import one_minus_auc

    ham = np.flatnonzero(~y)
    ranked = ham[np.argsort(-s[ham], kind="stable")]
    spam = np.sort(s[y])
    pairs = len(ham) * len(spam)
    auc, caught = _metrics(y, s)
    print(f"\n{name}: (1-AUC)% {auc:.4f}, caught at 0.1% FPR {caught:.2f}%", end=" ")
    print(f"({len(ham)} ham, {len(spam)} spam)")
    for rank, i in enumerate(ranked[:top]):
        below = int(np.searchsorted(spam, s[i], side="left"))
        share = 100 * below / pairs
        print(f"  ham #{rank + 1}: {s[i]:7.2f}, {below:6d} spam below, {share:.4f} of the (1-AUC)%")
        print(f"      {Path(paths[i]).name}  {_describe(paths[i])}")
    for k in (2, 7, top):
        keep = np.ones(len(y), dtype=bool)
        keep[ranked[:k]] = False
        print(f"  without the top {k} ham: (1-AUC)% {100 * one_minus_auc(y[keep], s[keep]):.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/var/tmp/trec07p", help="unpacked trec07p-dev (unpack.sh DEST)")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--ngram-bytes", type=int, help="override the feature window (diagnosis only)")
    args = ap.parse_args()

    from mailsift.corpus import read_index
    from mailsift.tokens import extract_bytes
    from mailsift.train import PROFILES, collect, fit_model, labelled_stream

    data = Path(args.data)
    settings, params = PROFILES["full"].features, PROFILES["full"].params
    if args.ngram_bytes:
        settings = replace(settings, ngram_bytes=args.ngram_bytes)
    train, test = read_index(data / "train.index"), read_index(data / "test.index")
    print(f"features {settings}\ntraining {params}", flush=True)
    ts = collect(labelled_stream(index=train), settings, dedupe=False, show_progress=False)
    model, _ = fit_model(ts, settings, params)
    y = np.array([it.spam for it in test], dtype=bool)
    paths = [str(it.path) for it in test]
    s = np.array([model.margin(extract_bytes(it.read(), settings).vec) for it in test])
    _tops("mailsift (model alone)", y, s, paths, args.top)

    ref = _import_reference()
    ref_train, ref_test = (ref.read_index(str(data / f"{n}.index")) for n in ("train", "test"))
    yr, sr, _, _ = ref.run(ref_train, ref_test, False)
    _tops("reference", yr.astype(bool), np.asarray(sr, dtype=np.float64), paths, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
