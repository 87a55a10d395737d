"""Measure how a small model of your own does alone, blended with the shipped
default, and the default alone: the numbers behind ``model.blend_until``.

Own models are trained (``full`` profile, as ``mailsift train`` does) on
small random samples of the SpamAssassin train split (2:1 ham:spam, like a
mailbox), then scored on

* the modern set (2019-2026 list mail; the shipped default never trained on it),
* the SpamAssassin test split, in the own models' domain.  The shipped default
  was trained on all of the SpamAssassin corpus, test half included, so here
  it is stood in for by ``--sa-default`` (the same recipe without that half).

For each sample and each default share s in 0, 0.25, ... 1 the score is
s * default points + (1 - s) * own points + rule points (network rules off),
exactly as ``Filter.verdict`` blends.  Prints one table; ``--json`` writes it.

    PYTHONPATH=engine nice python models/default/blend_experiment.py \
        --sa-default /tmp/sa-train-default.npz --json /tmp/blend.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mailsift.config import Config
from mailsift.corpus import read_index
from mailsift.evaluate import metrics
from mailsift.filter import DEFAULT_MODEL, Filter, default_share
from mailsift.model import LinearModel
from mailsift.parse import parse
from mailsift.score import model_points
from mailsift.tokens import extract
from mailsift.train import PROFILES, collect, fit_model, labelled_stream

#: the shared corpora (as in tests/conftest.py: $MAILSIFT_DATASETS, else ../shared/datasets)
DATASETS = Path(
    os.environ.get("MAILSIFT_DATASETS", Path(__file__).resolve().parents[2].parent / "shared" / "datasets")
)
SIZES = (50, 100, 200, 417, 1000)
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def component_scores(items, default: LinearModel, own: list[LinearModel], config: Config):
    """Per message: rule points, default points, each own model's points."""
    flt = Filter(config, model=default)
    settings = own[0].settings
    rules, dpts, opts = [], [], [[] for _ in own]
    for it in items:
        msg = parse(it.read())
        v = flt.verdict(msg, extract(msg, default.settings), evidence=0)
        rules.append(v.score - v.model_points)
        dpts.append(v.model_points)
        vec = extract(msg, settings).vec
        for k, m in enumerate(own):
            opts[k].append(model_points(m.log_odds(m.margin(vec)), config.model.weight))
    return np.array(rules), np.array(dpts), np.array(opts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--default", default=str(DEFAULT_MODEL), help="default model scored on modern")
    ap.add_argument("--sa-default", help="default recipe without the SA test half")
    ap.add_argument(
        "--train",
        metavar="INDEX",
        help="draw the own models from this index instead of the SpamAssassin train split",
    )
    ap.add_argument(
        "--test",
        nargs=2,
        metavar=("INDEX", "DEFAULT"),
        help="score on this index, blending with this default, instead of modern and SA test",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--rules",
        default="50,100,200,400",
        help="blend_until values to score with the shipped rule (default_share of each model's counts)",
    )
    ap.add_argument(
        "--additive",
        action="store_true",
        help="score the rules as share * default points + own points (not 1 - share)",
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    config = Config()
    config.dnsbl, config.auth.enabled = [], False
    profile = PROFILES["full"]
    train = read_index(args.train or DATASETS / "spamassassin" / "train.index")
    if args.test:
        tests = {Path(args.test[0]).parent.name: (read_index(args.test[0]), LinearModel.load(args.test[1]))}
    else:
        if not args.sa_default:
            ap.error("--sa-default is needed to score the SpamAssassin test split")
        tests = {
            "modern": (read_index(DATASETS / "modern" / "all.index"), LinearModel.load(args.default)),
            "sa-test": (
                read_index(DATASETS / "spamassassin" / "test.index"),
                LinearModel.load(args.sa_default),
            ),
        }
    ham = [i for i in train if not i.spam]
    spam = [i for i in train if i.spam]
    own, keys = [], []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        for n in SIZES:
            n_spam = n // 3
            pick = [ham[i] for i in rng.choice(len(ham), n - n_spam, replace=False)]
            pick += [spam[i] for i in rng.choice(len(spam), n_spam, replace=False)]
            ts = collect(labelled_stream(index=pick), profile.features, show_progress=False)
            model, _ = fit_model(ts, profile.features, profile.params)
            own.append(model)
            keys.append((seed, n, ts.n_ham, ts.n_spam))
    print(f"trained {len(own)} own models", file=sys.stderr)
    th = config.thresholds.add_header
    rows = []
    for name, (items, default) in tests.items():
        start = time.perf_counter()
        rules, dpts, opts = component_scores(items, default, own, config)
        print(f"scored {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        y = np.array([it.spam for it in items])
        for k, (seed, n, nh, ns) in enumerate(keys):
            shares = [(s, None) for s in SHARES]
            shares += [(default_share(nh, ns, int(r)), int(r)) for r in args.rules.split(",")]
            for s, rule in shares:
                total = s * dpts + (1 - s) * opts[k] + rules
                if rule is not None and args.additive:  # the default's share added to the own model's points
                    total = s * dpts + opts[k] + rules
                m = metrics(y, total, threshold=th)
                rows.append(
                    {"test": name, "seed": seed, "n": n, "n_ham": nh, "n_spam": ns, "default_share": s}
                    | {"blend_until": rule}
                    | {k2: m[k2] for k2 in ("one_minus_auc_pct", "fpr_pct", "fnr_pct")}
                )
    # medians over seeds
    print(f"{'test':8} {'n':>5} {'share':>12} {'ham flagged%':>13} {'spam caught%':>13} {'(1-AUC)%':>9}")
    for name in tests:
        for n in SIZES:
            for s in [*SHARES, *(f"N={r}" for r in args.rules.split(","))]:
                if isinstance(s, str):
                    sel = [
                        r
                        for r in rows
                        if r["test"] == name and r["n"] == n and r["blend_until"] == int(s[2:])
                    ]
                    label = f"{s}({np.median([r['default_share'] for r in sel]):.2f})"
                else:
                    sel = [
                        r
                        for r in rows
                        if r["test"] == name
                        and r["n"] == n
                        and r["default_share"] == s
                        and r["blend_until"] is None
                    ]
                    label = f"{s:.2f}"
                fpr = np.median([r["fpr_pct"] for r in sel])
                caught = 100 - np.median([r["fnr_pct"] for r in sel])
                auc = np.median([r["one_minus_auc_pct"] for r in sel])
                print(f"{name:8} {n:5d} {label:>12} {fpr:13.3f} {caught:13.2f} {auc:9.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
