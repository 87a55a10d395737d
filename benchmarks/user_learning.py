"""How much a user's own learning on top of the site model helps, and how
the per-user step (``UserParams.rate``) was chosen.

The site model is the shipped default (trained on other people's mail);
the "user" is one mailbox's real inbound stream, trec07p-dev's first
``--messages`` messages in delivery order.  Each message is scored with the
site model plus the user's learned share, then, as the user would click,
learned: every message (``all``: TREC's immediate-feedback protocol) or
only the ones the verdict got wrong at the 5-point threshold
(``mistakes``: Junk / Not Junk clicks).  The site model alone on the same
stream is the baseline.  The math is ``usermodel`` itself on an in-memory
state (the stores add nothing to the arithmetic).

    python benchmarks/user_learning.py [--messages 4000] [--rates 1,2,4,8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

from mailsift import Filter  # noqa: E402
from mailsift.config import Config  # noqa: E402
from mailsift.corpus import read_index  # noqa: E402
from mailsift.evaluate import metrics  # noqa: E402
from mailsift.score import model_points  # noqa: E402
from mailsift.usermodel import UnitVec, UserParams, adjustment, plan  # noqa: E402


def run(params, xs, site, labels, protocol, weight, cap, threshold):
    s_state: dict[int, float] = {}
    a_state: dict[int, float] = {}
    points, clicks = [], 0
    for x, lo, spam in zip(xs, site, labels):
        keys = x.slots.tolist()
        s = np.array([s_state.get(k, 0.0) for k in keys])
        a = np.array([a_state.get(k, 0.0) for k in keys])
        combined = lo + adjustment(params, x, s, a)
        p = model_points(combined, weight, cap)
        points.append(p)
        if protocol == "mistakes" and (p >= threshold) == spam:
            continue
        clicks += 1
        _, change = plan(params, x, lo, s, a, b"", None, spam, False)
        for k, ds, da in zip(keys, change.ds.tolist(), change.da.tolist()):
            s_state[k] = s_state.get(k, 0.0) + ds
            a_state[k] = a_state.get(k, 0.0) + da
    return np.array(points), clicks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trec", default="/var/tmp/trec07p", help="unpacked trec07p-dev")
    ap.add_argument("--index", help="another index file as the user's mailbox (instead of trec07p-dev's)")
    ap.add_argument(
        "--shuffle", type=int, metavar="SEED", help="shuffle the mailbox (for an index not in date order)"
    )
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--rates", default="1,2,4,8")
    ap.add_argument("--samples", default="1", help="UserParams.sample values to try")
    args = ap.parse_args()
    items = read_index(Path(args.index) if args.index else Path(args.trec) / "all.index")
    if args.shuffle is not None:
        order = np.random.default_rng(args.shuffle).permutation(len(items))
        items = [items[i] for i in order]
    items = items[: args.messages]
    flt = Filter(Config())
    t = time.perf_counter()
    xs, site, labels = [], [], []
    for it in items:
        _, feats = flt.features(it.path.read_bytes())
        xs.append(feats.vec)
        site.append(flt.site_log_odds(feats))
        labels.append(it.spam)
    print(f"{len(items)} messages read in {time.perf_counter() - t:.0f} s ({sum(labels)} spam)")
    weight, cap = flt.model_weight, (flt.config.model.default_cap if flt.is_generic else None)
    threshold = flt.config.thresholds.add_header
    base = np.array([model_points(lo, weight, cap) for lo in site])
    rows = [("site model alone", "-", 0, metrics(labels, base, threshold))]
    for sample in (int(x) for x in args.samples.split(",")):
        units = [UnitVec.of(v, sample) for v in xs]
        for protocol in ("mistakes", "all"):
            for rate in (float(r) for r in args.rates.split(",")):
                params = UserParams(rate=rate, sample=sample)
                pts, clicks = run(params, units, site, labels, protocol, weight, cap, threshold)
                name = f"+ user, {protocol}" + (f", 1/{sample}" if sample > 1 else "")
                rows.append((name, f"{rate:g}", clicks, metrics(labels, pts, threshold)))
    print(f"{'run':28} {'rate':>5} {'clicks':>7} {'(1-AUC)%':>9} {'FPR%':>6} {'FNR%':>6} {'caught@0.1%':>11}")
    for name, rate, clicks, m in rows:
        print(
            f"{name:28} {rate:>5} {clicks:>7} {m['one_minus_auc_pct']:>9.3f} {m['fpr_pct']:>6.2f} "
            f"{m['fnr_pct']:>6.2f} {m['spam_caught_pct_at_fpr_0_1']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
