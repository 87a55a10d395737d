#!/usr/bin/env python3
"""mailsift against SpamAssassin, Bogofilter, CRM114 and Rspamd on one split.

Installs what is missing from Debian's archive (apt-get, as root), trains
every filter on the same train index and scores the same test index, with
all state in a temporary folder (never the system's config), then writes one
run folder per filter and the comparison (table, report.json, ROC and
histogram figures) with ``mailsift eval --compare``.

    python benchmarks/peers/run.py                      # the development split
    python benchmarks/peers/run.py --train my-train.index --test my-test.index --out my-report
    python benchmarks/peers/run.py --online --out online-report   # score, then learn, each message

Figures and fairness caveats: benchmarks/peers/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import apt_install, load_corpus, missing_packages  # noqa: E402

from mailsift.corpus import read_index  # noqa: E402
from mailsift.datasets import ORDERS, ordered  # noqa: E402

DATASETS = (
    Path(os.environ.get("MAILSIFT_DATASETS") or HERE.parents[2] / "shared" / "datasets") / "spamassassin"
)
PEERS = ("spamassassin", "bogofilter", "crm114", "rspamd")
#: the mailsift command line of the interpreter running this script
MAILSIFT = [sys.executable, "-m", "mailsift.cli"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--train", default=str(DATASETS / "train.index"), help="train index (default: the dev split)"
    )
    ap.add_argument(
        "--test", default=str(DATASETS / "test.index"), help="test index (default: the dev split)"
    )
    ap.add_argument(
        "--online",
        nargs="?",
        const=str(DATASETS / "all.index"),
        metavar="INDEX",
        help="instead of train/test: score each message of INDEX, then learn it (TREC immediate "
        "feedback); default INDEX: the whole development corpus",
    )
    ap.add_argument(
        "--order",
        choices=ORDERS,
        default="shuffle",
        help="message order for --online (default shuffle: the development index lists all ham first)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed for --order shuffle (default 0)")
    ap.add_argument(
        "--out", default="peers-report", help="folder for the runs and the report (default ./peers-report)"
    )
    ap.add_argument("--only", nargs="+", choices=PEERS, default=list(PEERS), help="run only these peers")
    ap.add_argument(
        "--no-install", action="store_true", help="fail instead of running apt-get for a missing peer"
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    modules = [importlib.import_module(name) for name in args.only]
    missing = missing_packages({prog: pkg for m in modules for prog, pkg in m.NEEDS.items()})
    if missing and args.no_install:
        sys.exit(f"missing Debian packages: {' '.join(missing)}")
    apt_install(missing)

    runs = [out / "mailsift"]
    t0 = time.perf_counter()
    if args.online:
        items = ordered(read_index(args.online), args.order, args.seed)  # the order mailsift eval uses
        print(f"{len(items)} messages, online, {args.order} order", file=sys.stderr)
        how = ["--online", args.online, "--order", args.order, "--seed", str(args.seed)]
    else:
        corpus = load_corpus(args.train, args.test)
        print(f"{len(corpus.train)} training and {len(corpus.test)} test messages", file=sys.stderr)
        how = ["--train", args.train, "--test", args.test]
    subprocess.run(
        [*MAILSIFT, "eval", *how, "--out", str(runs[0]), "--json"], check=True, stdout=subprocess.DEVNULL
    )
    print(f"mailsift done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for module in modules:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"mailsift-peer-{module.__name__}-") as state:
            if args.online:
                module.run_online(items, Path(state) / "state", out / module.__name__)
            else:
                module.run(corpus, Path(state) / "state", out / module.__name__)
        runs.append(out / module.__name__)
        print(f"{module.NAME} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return subprocess.run([*MAILSIFT, "eval", "--compare", *map(str, runs), "--out", str(out)]).returncode


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
