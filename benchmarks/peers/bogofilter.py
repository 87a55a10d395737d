"""Bogofilter: Robinson-Fisher Bayes, trained on every training message
(``-n``/``-s`` in bulk mode), scored in one bulk process (``-B``)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from common import Corpus, package_version, save

NAME = "Bogofilter"
NEEDS = {"bogofilter": "bogofilter"}
#: bogofilter's compiled-in spam_cutoff (``bogofilter -Q``)
THRESHOLD = 0.99
NOTES = (
    "Debian bogofilter with its compiled-in defaults (empty config file, no /etc/bogofilter.cf); "
    "trained on every training message (bulk -n / -s), not train-on-error; scored in one bulk process "
    "(-B), spamicity printed to 17 digits so ties are the filter's own"
)
_LINE = re.compile(rb"^(.*) X-Bogosity: \w+,.*? spamicity=([0-9.]+)(?:,|$)")


def _bogofilter(state: Path, *args: str) -> subprocess.CompletedProcess:
    """Exit status 0/1/2 is spam/ham/unsure (of the last message); 3 is an error."""
    cmd = ["bogofilter", "-c", str(state / "bogofilter.cf"), "-d", str(state / "db"), *args]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode not in (0, 1, 2):
        raise RuntimeError(
            f"bogofilter {' '.join(args[:2])}: status {result.returncode}: {result.stderr[-500:]!r}"
        )
    return result


def run(corpus: Corpus, state: Path, out: Path):
    (state / "db").mkdir(parents=True)
    (state / "bogofilter.cf").write_text("")
    t0 = time.perf_counter()
    _bogofilter(state, "-n", "-B", *corpus.train_ham)
    _bogofilter(state, "-s", "-B", *corpus.train_spam)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = _bogofilter(state, "--spamicity-formats=%0.17f, %0.17f, %0.17f", "-v", "-B", *corpus.test_paths)
    score_seconds = time.perf_counter() - t0
    by_path = {}
    for line in result.stdout.splitlines():
        m = _LINE.match(line)
        if not m:
            raise RuntimeError(f"bogofilter: unexpected output line {line[:200]!r}")
        by_path[m.group(1).decode()] = float(m.group(2))
    scores = [by_path[p] for p in corpus.test_paths]
    return save(
        out,
        NAME,
        corpus,
        scores,
        threshold=THRESHOLD,
        train_seconds=train_seconds,
        score_seconds=score_seconds,
        version=package_version("bogofilter"),
        notes=NOTES,
    )
