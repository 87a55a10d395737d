"""Bogofilter: Robinson-Fisher Bayes, trained on every training message
(``-n``/``-s`` in bulk mode), scored in one bulk process (``-B``)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from common import Corpus, package_version, progress, save

from mailsift.corpus import Labelled

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


def _bogofilter(state: Path, *args: str, ok: tuple[int, ...] = (0, 1, 2)) -> subprocess.CompletedProcess:
    """Exit status 0/1/2 is spam/ham/unsure (of the last message); 3 is an
    error, which online scoring accepts while no wordlist exists yet."""
    cmd = ["bogofilter", "-c", str(state / "bogofilter.cf"), "-d", str(state / "db"), *args]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode not in ok:
        raise RuntimeError(
            f"bogofilter {' '.join(args[:2])}: status {result.returncode}: {result.stderr[-500:]!r}"
        )
    return result


SPAMICITY_FORMAT = "--spamicity-formats=%0.17f, %0.17f, %0.17f"


def _create(state: Path) -> None:
    (state / "db").mkdir(parents=True)
    (state / "bogofilter.cf").write_text("")


def run(corpus: Corpus, state: Path, out: Path):
    _create(state)
    t0 = time.perf_counter()
    _bogofilter(state, "-n", "-B", *corpus.train_ham)
    _bogofilter(state, "-s", "-B", *corpus.train_spam)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = _bogofilter(state, SPAMICITY_FORMAT, "-v", "-B", *corpus.test_paths)
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
        corpus.test,
        scores,
        threshold=THRESHOLD,
        train_seconds=train_seconds,
        n_train=len(corpus.train),
        score_seconds=score_seconds,
        version=package_version("bogofilter"),
        notes=NOTES,
    )


def run_online(items: list[Labelled], state: Path, out: Path):
    """Score each message, then register it with its label (-s / -n), as a
    mail client's "junk / not junk" buttons feed bogofilter.  Before the
    first registration there is no wordlist and bogofilter cannot score:
    that first message gets 0.5, its own "unsure"."""
    _create(state)
    scores = []
    t0 = time.perf_counter()
    for it in progress(items, len(items), NAME):
        empty = not (state / "db" / "wordlist.db").exists()  # status 3 until something is registered
        result = _bogofilter(
            state, SPAMICITY_FORMAT, "-v", "-B", str(it.path), ok=(0, 1, 2, 3) if empty else (0, 1, 2)
        )
        m = _LINE.match(result.stdout.strip())
        if m is None and not empty:
            raise RuntimeError(f"bogofilter: unexpected output {result.stdout[:200]!r}")
        scores.append(float(m.group(2)) if m else 0.5)
        _bogofilter(state, "-s" if it.spam else "-n", "-B", str(it.path))
    return save(
        out,
        NAME,
        items,
        scores,
        threshold=THRESHOLD,
        score_seconds=time.perf_counter() - t0,
        online=True,
        version=package_version("bogofilter"),
        notes="Debian bogofilter with its compiled-in defaults; each message scored, then registered with "
        "its label (-s / -n); 0.5 before the first registration; two bogofilter processes per message",
    )
