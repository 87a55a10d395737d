"""``mailsift tune``: fit the model's weight and every rule's points to the
user's own labelled mail.

Each message becomes a row: the model's calibrated log-odds, and one 0/1
column per rule that fired on any message.  An L2-regularised logistic
regression on those rows gives coefficients in log-odds; multiplied by
5/ln(10) they are points on the scale ``score.py`` uses (the model's
coefficient is its weight directly).  The gain is measured honestly: the
tuned weights are scored by 5-fold cross-validation against the current
weights on the same mail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from .evaluate import metrics
from .filter import Filter
from .parse import parse
from .score import POINTS_PER_DECADE
from .tokens import extract

POINTS_PER_NAT = POINTS_PER_DECADE / math.log(10)


@dataclass
class TuneReport:
    model_weight: float
    rule_weights: dict[str, float]
    before: dict
    after: dict
    n_ham: int
    n_spam: int


def rows(flt: Filter, raws, labels) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(model log-odds, rule names, rule hit matrix, current total scores)."""
    log_odds, hit_sets, scores = [], [], []
    for raw in raws:
        msg = parse(raw)
        feats = extract(msg, flt.model.settings)
        verdict = flt.verdict(msg, feats, evidence=0)
        log_odds.append(verdict.log_odds)
        hit_sets.append({h.name for h in verdict.hits})
        scores.append(verdict.score)
    names = sorted(set().union(*hit_sets)) if hit_sets else []
    hits = np.array([[name in s for name in names] for s in hit_sets], dtype=np.float64).reshape(
        len(raws), -1
    )
    return np.array(log_odds), names, hits, np.array(scores)


def fit(log_odds: np.ndarray, hits: np.ndarray, labels: np.ndarray, c: float = 1.0) -> LogisticRegression:
    X = np.column_stack([log_odds, hits])
    # no intercept: the model's calibrated log-odds already carry the class
    # prior, and the score has no place for a constant besides the thresholds
    return LogisticRegression(C=c, max_iter=1000, fit_intercept=False).fit(X, labels)


def tune(flt: Filter, raws, labels, threshold: float) -> TuneReport:
    labels = np.asarray(labels, dtype=bool)
    log_odds, names, hits, scores = rows(flt, raws, labels)
    # cross-validated scores of the tuned combination, in points
    cv_points = np.empty(len(labels))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    for train, test in folds.split(log_odds, labels):
        lr = fit(log_odds[train], hits[train], labels[train])
        cv_points[test] = POINTS_PER_NAT * lr.decision_function(np.column_stack([log_odds[test], hits[test]]))
    lr = fit(log_odds, hits, labels)
    coef = lr.coef_[0]
    return TuneReport(
        model_weight=round(float(coef[0]), 4),
        rule_weights={n: round(float(POINTS_PER_NAT * w), 3) for n, w in zip(names, coef[1:])},
        before=metrics(labels, scores, threshold),
        after=metrics(labels, cv_points, threshold),
        n_ham=int((~labels).sum()),
        n_spam=int(labels.sum()),
    )


def to_toml(data: dict) -> str:
    """A small TOML writer for the config's own shapes (tables of str,
    number, bool, list of str, inline tables; arrays of tables)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list)) or _is_str_list(v)}
    for key, value in scalars.items():
        lines.append(f"{key} = {_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            for k, v in value.items():
                lines.append(f"{_key(k)} = {_value(v)}")
        elif isinstance(value, list) and not _is_str_list(value):
            for table in value:
                lines.append(f"\n[[{key}]]")
                for k, v in table.items():
                    lines.append(f"{_key(k)} = {_value(v)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(not isinstance(x, dict) for x in v)


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _value(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
