"""CRM114: its OSB classifier with the settings of the mailfilter it ships
(osb_mailfilter.crm beside this file), trained on error with a thick
threshold in index order, one ``crm`` process per message as mailfilter.crm
runs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from common import Corpus, package_version, progress, save

from mailsift.corpus import Labelled

NAME = "CRM114"
NEEDS = {"crm": "crm114"}
SCRIPT = Path(__file__).with_name("osb_mailfilter.crm")
#: mailfilter.cf's :decision_length: and :thick_threshold:
DECISION_LENGTH = 16000
THICK = 5.0
NOTES = (
    "Debian crm114 20100106; OSB classifier with mailfilter.cf's settings (osb unique microgroom, "
    "tokens [[:graph:]]+, first 16,000 bytes, thick threshold 5.0), one pass of train-on-error in "
    "index order; mailfilter's base64 decoding and rewrites not applied; score = -pR; one crm process "
    "per message (as mailfilter.crm runs), which its msgs/s include"
)
ONLINE_NOTES = (
    "Debian crm114 20100106; OSB with mailfilter.cf's settings (as in the split run); each message "
    "classified, then learned if on the wrong side of the thick threshold; one crm process per message"
)


def _crm(state: Path, raw: bytes, mode: str) -> float:
    result = subprocess.run(
        ["crm", str(SCRIPT), f"--dir={state}/", f"--mode={mode}", f"--thick={THICK}"],
        input=raw[:DECISION_LENGTH],
        capture_output=True,
        check=True,
    )
    try:
        return float(result.stdout.split()[0])
    except (IndexError, ValueError):
        raise RuntimeError(f"crm: no pR in output {result.stdout[:200]!r} {result.stderr[:500]!r}") from None


def _create(state: Path) -> None:
    state.mkdir(parents=True)
    for css in ("nonspam", "spam"):  # classify needs both files; learning one token creates them
        subprocess.run(
            ["crm", f"-{{ learn <osb unique microgroom> ({state}/{css}.css) /[[:graph:]]+/ }}"],
            input=b"x",
            check=True,
            capture_output=True,
        )


def run(corpus: Corpus, state: Path, out: Path):
    _create(state)
    t0 = time.perf_counter()
    for item in progress(corpus.train, len(corpus.train), "CRM114 training"):
        _crm(state, item.read(), "spam" if item.spam else "ham")
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    test = progress(corpus.test, len(corpus.test), "CRM114 scoring")
    scores = [-_crm(state, item.read(), "score") for item in test]  # pR > 0 means ham
    score_seconds = time.perf_counter() - t0
    return save(
        out,
        NAME,
        corpus.test,
        scores,
        threshold=THICK,  # mailfilter.crm: pR <= -thick_threshold is spam
        train_seconds=train_seconds,
        n_train=len(corpus.train),
        score_seconds=score_seconds,
        version=package_version("crm114"),
        notes=NOTES,
    )


def run_online(items: list[Labelled], state: Path, out: Path):
    """Score each message, then train on error (the pR printed is the one
    before learning): mailfilter's own way of learning from feedback."""
    _create(state)
    t0 = time.perf_counter()
    scores = [
        -_crm(state, it.read(), "spam" if it.spam else "ham") for it in progress(items, len(items), NAME)
    ]
    return save(
        out,
        NAME,
        items,
        scores,
        threshold=THICK,
        score_seconds=time.perf_counter() - t0,
        online=True,
        version=package_version("crm114"),
        notes=ONLINE_NOTES,
    )
