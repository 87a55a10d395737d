"""Training from labelled mail: read, de-duplicate, extract features once,
estimate accuracy by cross-validation, calibrate, fit, and incremental
learn/unlearn of single messages.

Cross-validation is not only a report: its out-of-fold margins are what the
Platt calibration is fitted on, because margins on the training mail itself
are over-confident.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .corpus import CorpusError, Labelled, iter_source, mail_problem
from .evaluate import metrics
from .fitjobs import run_fits
from .model import LinearModel, TrainParams, Vec, fit_platt
from .report import strip_verdict_headers
from .score import model_points
from .tokens import FeatureSettings, extract_bytes

#: fewer messages than this in either class and ``train`` refuses to write a model
MIN_PER_CLASS = 50


@dataclass(frozen=True)
class Profile:
    """A named pair of feature settings and training settings."""

    features: FeatureSettings
    params: TrainParams


#: "full" reads the first 6,000 raw bytes, headers included (the TREC 2007
#: recipe; every setting chosen on trec07p-dev/train.index, see
#: models/default/README.md).  "portable" is the same with the headers the
#: receiving side writes (Received, Delivered-To, list headers ...) cut, so a
#: model carries over to other people's mailboxes.  "portable-text" has the
#: shipped default's features: what the sender wrote, decoded (4-grams of
#: sender headers and decoded text, words and word pairs, tagged header
#: tokens), which ranked 2019-2026 mail far better than raw bytes.  Its values
#: have unit length, not 1, hence the larger step and smaller eps.  Rate 0.02
#: is the candidate the default builds were measured with (benchmarks/
#: README.md, "Default model selection"): 0.05 ranks slightly better in
#: cross-validation, across corpora and on the modern set but flags less
#: spam at every default weight; no rate has shipped.  All learn with the one
#: update rule of :class:`~mailsift.model.LinearModel`.
PROFILES = {
    "full": Profile(FeatureSettings(), TrainParams()),
    "portable": Profile(FeatureSettings(receiver_headers=False), TrainParams()),
    "portable-text": Profile(
        FeatureSettings(
            scheme="v1",
            ngram_bytes=16384,
            osb_window=4,
            text_chars=6000,
            header_tokens=True,
            header_words="sender",
        ),
        TrainParams(rate=0.02, eps=1e-4),
    ),
}

_BODY_SPLIT = re.compile(rb"\r?\n\r?\n")


def message_digest(raw: bytes) -> bytes:
    """Identity of a message for de-duplication and the learn ledger: the
    Subject line and the body, so the same mail delivered twice (other
    Received headers) or re-sent under a new Message-ID is one message.
    Filters' verdict headers are removed first, so a message learned once as
    the proxy delivered it and once raw is one message."""
    parts = _BODY_SPLIT.split(strip_verdict_headers(raw), maxsplit=1)
    head = parts[0]
    body = parts[1] if len(parts) > 1 else b""
    m = re.search(rb"(?im)^subject:[ \t]*(.*)$", head)
    subject = m.group(1).strip() if m else b""
    body = body.replace(b"\r\n", b"\n").strip()
    return hashlib.sha256(subject + b"\0" + body).digest()[:16]


@dataclass
class TrainingSet:
    """Features and labels of labelled mail, and how reading it went."""

    X: list[Vec] = field(default_factory=list)
    y: list[bool] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    #: (name, reason) of the first skipped messages, for the user to look at
    skipped_examples: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def n_spam(self) -> int:
        return sum(self.y)

    @property
    def n_ham(self) -> int:
        return len(self.y) - self.n_spam


def progress(iterable: Iterable, total: int | None, desc: str, enabled: bool | None = None) -> Iterator:
    """tqdm on a terminal, nothing in pipes and logs."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iter(iterable)
    from tqdm import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit="msg", leave=False, file=sys.stderr))


def labelled_stream(
    ham: Iterable[str] = (), spam: Iterable[str] = (), index: Iterable[Labelled] = ()
) -> Iterator[tuple[bool, str, bytes | Exception]]:
    """(spam?, name, raw bytes or the error reading it) from folders/mboxes
    and index entries; a source that cannot be opened at all raises.
    Filters' verdict headers are already removed from the bytes: mail
    retrained from the folders mailsift delivered must not teach the model
    its own verdicts."""
    for item in index:
        try:
            yield item.spam, str(item.path), strip_verdict_headers(item.read())
        except CorpusError as exc:
            yield item.spam, str(item.path), exc
    for label, sources in ((False, ham), (True, spam)):
        for source in sources:
            for name, raw in iter_source(source):
                yield label, name, strip_verdict_headers(raw)


#: how many skipped messages ``collect`` names (the rest are only counted)
MAX_SKIPPED_EXAMPLES = 5


def collect(
    stream: Iterable[tuple[bool, str, bytes | Exception]],
    settings: FeatureSettings,
    total: int | None = None,
    dedupe: bool = True,
    show_progress: bool | None = None,
) -> TrainingSet:
    """Extract features of every message once; skip unreadable, empty and
    non-mail files (binary, no header block) and (with ``dedupe``) repeats,
    counting why and naming the first few.  Verdict headers are removed
    (again, for streams that do not come from :func:`labelled_stream`)."""
    ts = TrainingSet()
    seen: set[bytes] = set()
    start = time.perf_counter()
    for spam, name, raw in progress(stream, total, "reading", show_progress):
        if isinstance(raw, Exception):
            why, detail = "unreadable", str(raw)
        else:
            problem = mail_problem(raw)
            why = None if problem is None else "empty" if problem == "empty" else "not mail"
            detail = f"{name}: {problem}"
        if why:
            ts.skipped[why] += 1
            if len(ts.skipped_examples) < MAX_SKIPPED_EXAMPLES:
                ts.skipped_examples.append((name, detail))
            continue
        raw = strip_verdict_headers(raw)
        digest = message_digest(raw)
        if dedupe and digest in seen:
            ts.duplicates += 1
            continue
        seen.add(digest)
        ts.X.append(extract_bytes(raw, settings).vec)
        ts.y.append(spam)
        ts.digests.append(digest)
    ts.seconds = time.perf_counter() - start
    return ts


def _fold_of(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each message's fold: stratified by class, deterministic for a seed."""
    fold_of = np.empty(len(y), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for label in (False, True):
        where = np.flatnonzero(y == label)
        rng.shuffle(where)
        fold_of[where] = np.arange(len(where)) % folds
    return fold_of


def cross_val_margins(
    ts: TrainingSet, settings: FeatureSettings, params: TrainParams, folds: int, jobs: int = 1
) -> np.ndarray:
    """Out-of-fold margins: each message scored by a model that never saw it
    (stratified, deterministic folds)."""
    return cross_val_fit(ts, settings, params, folds, jobs, final=False)[0]


def cross_val_fit(
    ts: TrainingSet,
    settings: FeatureSettings,
    params: TrainParams,
    folds: int,
    jobs: int = 1,
    final: bool = True,
) -> tuple[np.ndarray, LinearModel | None]:
    """Out-of-fold margins, and (``final``) the model fitted on all of ``ts``.
    The folds and the final fit are independent, so with ``jobs`` > 1 they
    run at once in worker processes (:mod:`.fitjobs`); the results are the
    same bit for bit as in one process."""
    y = np.asarray(ts.y, dtype=bool)
    fold_of = _fold_of(y, folds, params.seed)
    tasks = [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(folds)]
    if final:
        tasks.append((np.arange(len(y)), None))
    results = run_fits(ts.X, y, tasks, settings, params, jobs)
    margins = np.empty(len(y), dtype=np.float64)
    for (_, test), result in zip(tasks[:folds], results):
        margins[test] = result
    return margins, (results[folds] if final else None)


@dataclass
class TrainReport:
    n_ham: int
    n_spam: int
    cv: dict
    seconds: float


def fit_model(
    ts: TrainingSet,
    settings: FeatureSettings,
    params: TrainParams,
    folds: int = 3,
    generic: bool = False,
    threshold: float = 5.0,
    weight: float = 1.0,
    cap: float | None = None,
    jobs: int = 1,
) -> tuple[LinearModel, TrainReport]:
    """Cross-validate (for the report and the calibration), then fit on all.
    The report's FPR/FNR are at ``threshold`` points with the model at
    ``weight`` (and ``cap``): the config's add_header threshold and the
    weight the model will be used at.  ``jobs``: processes for the folds and
    the final fit (see :func:`cross_val_fit`)."""
    start = time.perf_counter()
    y = np.asarray(ts.y, dtype=bool)
    oof, model = cross_val_fit(ts, settings, params, folds, jobs)
    a, c = fit_platt(oof, y)
    model.platt = (a, c)
    points = np.array([model_points(lo, weight, cap) for lo in a * oof + c])
    cv = metrics(y, points, threshold=threshold)
    for digest, label in zip(ts.digests, y):
        model.ledger.digests[digest] = (int(label), 0.0)
    model.info = {"generic": generic, "cv_folds": folds, "cv": {k: round(v, 4) for k, v in cv.items()}}
    return model, TrainReport(int((~y).sum()), int(y.sum()), cv, time.perf_counter() - start)
