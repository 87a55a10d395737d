#!/usr/bin/env python3
"""What ``mailsift train`` costs, in one process and with the folds and the
final fit in worker processes (``--jobs``), same run, beside the reference.

    PYTHONPATH=engine python benchmarks/train_speed.py [--data /var/tmp/trec07p] \
        [--messages 6000] [--repeats 3] [--jobs N]

The first ``--messages`` of trec07p-dev ``train.index`` (unpacked with its
``unpack.sh``): their features are read once (``collect``, timed), then
``fit_model`` (3-fold cross-validation for the calibration and the report,
then the final fit: ``train``'s work after reading) runs alternately with
``jobs=1`` and ``jobs=N``, ``--repeats`` times each; medians and their ratio
are printed, and whether the two models are the same bit for bit.  The
reference's one online pass over the same messages (reading included) is the
same-run yardstick.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "engine"))
sys.path.insert(0, str(HERE))

from learner import _import_reference  # noqa: E402

from mailsift.corpus import read_index  # noqa: E402
from mailsift.fitjobs import usable_cpus  # noqa: E402
from mailsift.train import PROFILES, collect, fit_model, labelled_stream  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/var/tmp/trec07p", help="unpacked trec07p-dev (unpack.sh DEST)")
    ap.add_argument("--messages", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=usable_cpus(), help="workers (default: the cores here)")
    args = ap.parse_args()
    if args.jobs < 2:
        ap.error("--jobs must be 2 or more: the comparison is against one process")

    data = Path(args.data)
    items = read_index(data / "train.index")[: args.messages]
    profile = PROFILES["full"]
    start = time.perf_counter()
    ts = collect(labelled_stream(index=items), profile.features, dedupe=False, show_progress=False)
    read_s = time.perf_counter() - start
    n = len(ts.y)
    print(f"{n} messages of {data / 'train.index'} ({ts.n_ham} ham, {ts.n_spam} spam); {usable_cpus()} cores")
    print(f"features read in {read_s:.1f} s ({n / read_s:,.0f} msgs/s)")

    ref = _import_reference()
    ref_items = ref.read_index(str(data / "train.index"))[: args.messages]
    times: dict[str, list[float]] = {"one": [], "jobs": [], "ref": []}
    models = {}
    for _ in range(args.repeats):
        for key, jobs in (("one", 1), ("jobs", args.jobs)):
            start = time.perf_counter()
            models[key], _ = fit_model(ts, profile.features, profile.params, jobs=jobs)
            times[key].append(time.perf_counter() - start)
        _, _, _, secs = ref.run([], ref_items, True)
        times["ref"].append(secs)
    med = {k: statistics.median(v) for k, v in times.items()}
    same = np.array_equal(models["one"].w, models["jobs"].w) and models["one"].platt == models["jobs"].platt
    print(
        f"\n| fit_model ({profile.params.epochs} passes, 3-fold CV) | median s | runs |\n| --- | ---: | --- |"
    )
    for key, label in (("one", "jobs=1"), ("jobs", f"jobs={args.jobs}"), ("ref", "reference, one pass")):
        print(f"| {label} | {med[key]:.1f} | {', '.join(f'{t:.1f}' for t in times[key])} |")
    print(
        f"\nspeed-up of jobs={args.jobs} over jobs=1: {med['one'] / med['jobs']:.2f}x; the models are "
        f"{'the same bit for bit' if same else 'DIFFERENT'}; "
        f"train's whole cost at jobs={args.jobs} (read + fit) is {read_s + med['jobs']:.1f} s, "
        f"{(read_s + med['jobs']) / med['ref']:.1f}x the reference's pass"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
