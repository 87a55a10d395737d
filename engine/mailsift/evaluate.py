"""Accuracy metrics as the TREC spam track defines them, and the two ways of
measuring: train on one index and test on another, or online (TREC
immediate feedback: score each message in order, then learn its label).

Scores are "higher is spammier" and need not be probabilities.  AUC is
computed exactly from ranks, with ties counting half.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .corpus import Labelled
    from .filter import Filter


@dataclass
class Scored:
    """Per-message results of one evaluation pass, in scoring order."""

    labels: list[bool] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    hit_names: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0


def _identity(items: Iterable, desc: str) -> Iterable:
    return items


def score_split(flt: Filter, items: list[Labelled], progress: Callable = _identity) -> Scored:
    """Score every message with a fixed filter; ``seconds`` is scoring time
    including reading each file, as a filter meets mail."""
    out = Scored()
    start = time.perf_counter()
    for item in progress(items, "scoring"):
        verdict = flt.score(item.read(), evidence=0)
        out.scores.append(verdict.score)
        out.hit_names.append([h.name for h in verdict.hits])
        out.labels.append(item.spam)
        out.paths.append(str(item.path))
    out.seconds = time.perf_counter() - start
    return out


def score_online(flt: Filter, items: list[Labelled], progress: Callable = _identity) -> Scored:
    """TREC immediate feedback: score each message, then learn its label
    with :meth:`LinearModel.step <mailsift.model.LinearModel.step>`, the
    same step a ``mailsift learn`` click takes.  The model's margin is
    log-odds already, so the calibration is left as it is (refitting it
    along the way would rescale early and late scores differently)."""
    from .parse import parse
    from .report import strip_verdict_headers
    from .tokens import extract_bytes

    out = Scored()
    model = flt.model
    start = time.perf_counter()
    for item in progress(items, "online"):
        raw = strip_verdict_headers(item.read())
        msg = parse(raw)
        feats = extract_bytes(raw, model.settings)
        verdict = flt.verdict(msg, feats, evidence=0)
        out.scores.append(verdict.score)
        out.hit_names.append([h.name for h in verdict.hits])
        model.step(feats.vec, item.spam)
        model._count(item.spam, 1)
        out.labels.append(item.spam)
        out.paths.append(str(item.path))
    out.seconds = time.perf_counter() - start
    return out


def one_minus_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """1 - ROC area, exactly (Mann-Whitney U with mid-ranks for ties)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # mid-ranks: every member of a run of equal scores gets the run's mean rank
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return 1.0 - u / (n_pos * n_neg)


def spam_caught_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Fraction of spam scored strictly above the threshold that lets at most
    ``fpr`` of the ham through (floor(fpr * n_ham) ham may score above it)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    ham = np.sort(scores[~labels])[::-1]
    spam = scores[labels]
    if len(ham) == 0 or len(spam) == 0:
        return float("nan")
    k = int(math.floor(fpr * len(ham) + 1e-9))
    threshold = ham[k] if k < len(ham) else -np.inf
    return float((spam > threshold).mean())


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def lam(fpr: float, fnr: float) -> float:
    """Logistic average misclassification: the TREC single-number summary."""
    z = (_logit(fpr) + _logit(fnr)) / 2
    return 1 / (1 + math.exp(-z))


def metrics(labels, scores, threshold: float, seconds: float | None = None) -> dict:
    """Every figure ``mailsift eval`` prints, as a dict of the JSON keys.

    lam% uses rates smoothed by half a message ((k + 0.5) / (n + 1)) so a
    perfect class does not make it zero or undefined."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_spam = int(labels.sum())
    n_ham = int(len(labels) - n_spam)
    fp = int((scores[~labels] >= threshold).sum())
    fn = int((scores[labels] < threshold).sum())
    out = {
        "n_ham": n_ham,
        "n_spam": n_spam,
        "one_minus_auc_pct": 100 * one_minus_auc(labels, scores),
        "lam_pct": 100 * lam((fp + 0.5) / (n_ham + 1), (fn + 0.5) / (n_spam + 1)),
        "spam_caught_pct_at_fpr_0_1": 100 * spam_caught_at_fpr(labels, scores, 0.001),
        "spam_caught_pct_at_fpr_0_01": 100 * spam_caught_at_fpr(labels, scores, 0.0001),
        "fpr_pct": 100 * fp / n_ham if n_ham else float("nan"),
        "fnr_pct": 100 * fn / n_spam if n_spam else float("nan"),
        "threshold": threshold,
    }
    if seconds is not None:
        out["seconds"] = seconds
        out["msgs_per_s"] = len(labels) / seconds if seconds > 0 else float("inf")
    return out


def rule_hit_rates(labels, hit_names: list[list[str]]) -> dict:
    """Per rule: how many ham and spam it fired on, and the percentages, so
    a rule that hits ham as often as spam shows itself."""
    labels = list(labels)
    n_spam = sum(labels)
    n_ham = len(labels) - n_spam
    out: dict[str, dict] = {}
    for spam, names in zip(labels, hit_names):
        for name in set(names):
            entry = out.setdefault(name, {"ham": 0, "spam": 0})
            entry["spam" if spam else "ham"] += 1
    for entry in out.values():
        entry["ham_pct"] = 100 * entry["ham"] / n_ham if n_ham else 0.0
        entry["spam_pct"] = 100 * entry["spam"] / n_spam if n_spam else 0.0
    return dict(sorted(out.items()))


def format_metrics(m: dict) -> str:
    """The human-readable block ``mailsift eval`` prints."""
    lines = [
        f"messages        {m['n_ham']} ham, {m['n_spam']} spam",
        f"(1-AUC)%        {m['one_minus_auc_pct']:.4f}",
        f"lam%            {m['lam_pct']:.3f}",
        f"spam caught     {m['spam_caught_pct_at_fpr_0_1']:.2f}% at 0.1% FPR, "
        f"{m['spam_caught_pct_at_fpr_0_01']:.2f}% at 0.01% FPR",
        f"at threshold    FPR {m['fpr_pct']:.3f}%  FNR {m['fnr_pct']:.3f}%  (score >= {m['threshold']:g})",
    ]
    if "msgs_per_s" in m:
        lines.append(f"speed           {m['msgs_per_s']:.0f} msgs/s ({m['seconds']:.1f} s)")
    if m.get("rules"):
        lines.append("rule hits       ham%     spam%")
        for name, r in m["rules"].items():
            lines.append(f"  {name:<24} {r['ham_pct']:6.2f}   {r['spam_pct']:6.2f}")
    return "\n".join(lines)
