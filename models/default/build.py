"""Build a candidate for the shipped default model reproducibly, and check a model.

    PYTHONPATH=engine python models/default/build.py                 # build a candidate + check it
    PYTHONPATH=engine python models/default/build.py --check-only    # check the shipped model

The shipped ``models/default/model.npz`` is still the format-1 file made by
the learner issue 9 replaced; that learner is gone, so it cannot be rebuilt
(models/default/README.md).  This script builds the next candidate with
``mailsift train`` (the command a user runs; the recipe below is its
arguments): today's learner over the same decoded-text features
(``--features portable-text``), on the 2002 corpus and trec07p-dev (unpacked
into the cache folder by its ``unpack.sh`` unless ``$MAILSIFT_TREC07P``
names a copy), written to ``--out`` (default: the cache folder), with the
corpora, the command and the git commit in the model's ``info``.  It ships
only when ``--out`` is ``models/default/model.npz`` itself (the package's
``engine/mailsift/data/default-model.npz`` is a symlink to it); the card says
why no candidate has shipped yet.

The check scores the modern set (2019-2026 list mail, never trained on: its
labels leak through list headers, see its README) with the shipped filter,
network rules off, and prints ham flagged and spam caught at the default
threshold: the bar is <= 1% of ham flagged.  Training is deterministic (fixed
seeds), so the same corpora and code give the same weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("MAILSIFT_DATASETS", ROOT.parent / "shared" / "datasets"))
if "MAILSIFT_DATASETS" not in os.environ and not DATASETS.is_dir():  # a named one is used or fails
    DATASETS = Path("/work/shared/datasets")
OUT = ROOT / "models" / "default" / "model.npz"
_XDG_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
#: the folder unpack.sh uses too
CACHE = Path(os.environ.get("MAILSIFT_CACHE", _XDG_CACHE / "mailsift"))
CANDIDATE = CACHE / "default-candidate.npz"

#: the rest of the ``mailsift train`` command line
RECIPE_ARGS = ["--features", "portable-text", "--generic"]


def trec07p() -> Path:
    """The unpacked trec07p-dev folder: $MAILSIFT_TREC07P when set, else the
    corpus's own unpack.sh into the cache folder (the datasets are read-only;
    unpacking takes about a minute and is reused)."""
    if os.environ.get("MAILSIFT_TREC07P"):
        return Path(os.environ["MAILSIFT_TREC07P"])
    script = DATASETS / "trec07p-dev" / "unpack.sh"
    if not script.is_file():
        sys.exit(f"build: {script} not found (set MAILSIFT_DATASETS or MAILSIFT_TREC07P)")
    print(f"unpacking trec07p-dev with {script} ...", flush=True)
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"build: {script} failed: {out.stderr.strip()}")
    return Path(out.stdout.strip().splitlines()[-1])


def recipe_indexes() -> list[Path]:
    """The corpora (index files) the default is trained on; see the model card."""
    return [DATASETS / "spamassassin" / "all.index", trec07p() / "all.index"]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build(out: Path) -> None:
    from mailsift.cli import main as cli
    from mailsift.model import LinearModel

    indexes = recipe_indexes()
    for index in indexes:
        if not index.is_file():
            sys.exit(f"build: {index} not found (trec07p-dev: unpack it with its unpack.sh)")
    argv = ["train", "--index", *map(str, indexes), *RECIPE_ARGS, "--model", str(out)]
    print("mailsift " + " ".join(argv), flush=True)
    if cli(argv) != 0:
        sys.exit("build: mailsift train failed")
    model = LinearModel.load(out)
    model.info["built"] = {
        "by": "models/default/build.py",
        "command": "mailsift " + " ".join(argv),
        "corpora": [str(p) for p in indexes],
        "commit": git_commit(),
    }
    model.save(out)  # saving again changes only the metadata
    shipped = out.resolve() == OUT.resolve()
    print(f"written {out}" + (" (shipped)" if shipped else " (a candidate, not shipped)"))


def check(path: Path, default_weight: float | None = None) -> dict:
    """Ham flagged / spam caught on the modern set with the shipped filter
    (default weight and cap, TLD and header rules on, network rules off);
    ``default_weight`` overrides ``model.default_weight`` for a candidate
    that needs another one (the card's weight 3.5 figures)."""
    from mailsift.config import Config
    from mailsift.corpus import read_index
    from mailsift.evaluate import metrics
    from mailsift.filter import Filter

    config = Config()
    config.dnsbl, config.auth.enabled = [], False
    if default_weight is not None:
        config.model.default_weight = default_weight
    modern = DATASETS / "modern" / "all.index"
    if not modern.is_file():
        sys.exit(f"build: {modern} not found (set MAILSIFT_DATASETS)")
    flt = Filter(config, str(path))
    items = read_index(modern)
    start = time.perf_counter()
    scores = np.array([flt.score(it.read(), evidence=0).score for it in items])
    y = np.array([it.spam for it in items])
    src = np.array([it.path.parent.name for it in items])
    m = metrics(y, scores, threshold=config.thresholds.add_header)
    flagged = scores >= config.thresholds.add_header
    out = {
        "ham_flagged_pct": 100 * flagged[~y].mean(),
        "ham_flagged": int(flagged[~y].sum()),
        "spam_caught_pct": 100 * flagged[y].mean(),
        "osst_users_spam_caught_pct": 100 * flagged[y & (src == "osst-users")].mean(),
        "one_minus_auc_pct": m["one_minus_auc_pct"],
        "spam_caught_pct_at_fpr_0_1": m["spam_caught_pct_at_fpr_0_1"],
        "seconds": time.perf_counter() - start,
    }
    print(
        f"modern ({(~y).sum()} ham, {y.sum()} spam; default_weight {config.model.default_weight:g}): "
        f"ham flagged {out['ham_flagged_pct']:.3f}% "
        f"({out['ham_flagged']}), spam caught {out['spam_caught_pct']:.2f}% (osst-users "
        f"{out['osst_users_spam_caught_pct']:.2f}%), (1-AUC)% {out['one_minus_auc_pct']:.4f}, "
        f"caught at 0.1% FPR {out['spam_caught_pct_at_fpr_0_1']:.2f}%"
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        type=Path,
        help=f"model to write (default {CANDIDATE}; {OUT} replaces the shipped model), "
        f"or with --check-only the model to check (default {OUT})",
    )
    ap.add_argument("--check-only", action="store_true", help="only check the model at --out")
    ap.add_argument(
        "--default-weight",
        type=float,
        help="check at this model.default_weight instead of its default in config.py",
    )
    args = ap.parse_args()
    out = args.out or (OUT if args.check_only else CANDIDATE)
    if not args.check_only:
        if out.is_symlink():  # the save's rename would replace the link, not its target
            sys.exit(
                f"build: {out} is a symlink (to {out.resolve()}); writing it would replace "
                f"the link with a file. Name the file itself (to ship: {OUT})"
            )
        build(out)
    result = check(out, args.default_weight)
    return 0 if result["ham_flagged_pct"] <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
