"""``mailsift tune``: fit the model's weight and every rule's points to the
user's own labelled mail.

Each message becomes a row: the model's calibrated log-odds, and one 0/1
column per rule that fired on any message.  An L2-regularised logistic
regression on those rows gives coefficients in log-odds; multiplied by
5/ln(10) they are points on the scale ``score.py`` uses (the model's
coefficient is its weight directly).  The gain is measured honestly: the
tuned weights are scored by 5-fold cross-validation against the current
weights on the same mail.

Two things would make the fit lie, and are kept out:

- *Informational* hits (``rules.names.is_informational``: ``*_TIMEOUT``,
  ``DNS_DEADLINE``, ``*_TEMPERROR``, ``CLIENT_FROM_RECEIVED``, ...) get no
  column: they say what was not checked, and pricing them would let DNS
  trouble move a verdict.  Nor do names no rule module declares.
- Mail the model was trained on (its ledger holds every trained or learned
  message's digest): there its log-odds are overconfident, since it has seen
  the answer and separates it, so the fit finds the rules worthless.  ``tune``
  counts the overlap and says so; ``skip_trained`` leaves those messages out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from .evaluate import metrics
from .filter import Filter
from .parse import parse
from .rules.names import priceable_rule_names
from .score import POINTS_PER_DECADE
from .tokens import extract
from .train import message_digest

POINTS_PER_NAT = POINTS_PER_DECADE / math.log(10)
FOLDS = 5


class TuneError(ValueError):
    """The labelled mail cannot give usable weights (too few messages left,
    or a fit that says the model does not predict the labels)."""


@dataclass
class TuneReport:
    model_weight: float
    rule_weights: dict[str, float]
    before: dict
    after: dict
    n_ham: int
    n_spam: int
    #: labelled messages found in the model's ledger (trained on or learned)
    n_trained: int = 0
    #: of those, how many were left out (skip_trained)
    n_skipped: int = 0
    #: hit names that fired but were given no points (informational or unknown)
    unpriced: list[str] = field(default_factory=list)


def trained_mask(flt: Filter, raws) -> np.ndarray:
    """True for each message whose digest is in the model's ledger."""
    ledger = flt.model.ledger.digests
    return np.array([message_digest(raw) in ledger for raw in raws], dtype=bool)


def rows(flt: Filter, raws) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, list[str]]:
    """(model log-odds, priced rule names, their hit matrix, current total
    scores, names that fired but get no column)."""
    log_odds, hit_sets, scores = [], [], []
    for raw in raws:
        msg = parse(raw)
        feats = extract(msg, flt.model.settings)
        verdict = flt.verdict(msg, feats, evidence=0)
        log_odds.append(verdict.log_odds)
        hit_sets.append({h.name for h in verdict.hits})
        scores.append(verdict.score)
    fired = set().union(*hit_sets) if hit_sets else set()
    priceable = priceable_rule_names(z.name for z in flt.config.dnsbl)
    names = sorted(fired & priceable)
    unpriced = sorted(fired - priceable)
    hits = np.array([[name in s for name in names] for s in hit_sets], dtype=np.float64).reshape(
        len(raws), -1
    )
    return np.array(log_odds), names, hits, np.array(scores), unpriced


def fit(log_odds: np.ndarray, hits: np.ndarray, labels: np.ndarray, c: float = 1.0) -> LogisticRegression:
    X = np.column_stack([log_odds, hits])
    # no intercept: the model's calibrated log-odds already carry the class
    # prior, and the score has no place for a constant besides the thresholds
    return LogisticRegression(C=c, max_iter=1000, fit_intercept=False).fit(X, labels)


def tune(
    flt: Filter, raws, labels, threshold: float, skip_trained: bool = False, min_per_class: int = FOLDS
) -> TuneReport:
    """Fit the weights on ``raws`` (labels: True for spam); with
    ``skip_trained``, messages in the model's ledger are left out."""
    raws = list(raws)
    labels = np.asarray(labels, dtype=bool)
    trained = trained_mask(flt, raws)
    n_trained = int(trained.sum())
    if skip_trained and n_trained:
        raws = [r for r, t in zip(raws, trained) if not t]
        labels = labels[~trained]
    n_spam, n_ham = int(labels.sum()), int((~labels).sum())
    if min(n_ham, n_spam) < max(min_per_class, FOLDS):
        left = " left after leaving out the mail the model was trained on" if skip_trained else ""
        raise TuneError(
            f"need at least {max(min_per_class, FOLDS)} messages of each class, have {n_ham} ham "
            f"and {n_spam} spam{left}"
        )
    log_odds, names, hits, scores, unpriced = rows(flt, raws)
    # cross-validated scores of the tuned combination, in points
    cv_points = np.empty(len(labels))
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)
    for train, test in folds.split(log_odds, labels):
        lr = fit(log_odds[train], hits[train], labels[train])
        cv_points[test] = POINTS_PER_NAT * lr.decision_function(np.column_stack([log_odds[test], hits[test]]))
    lr = fit(log_odds, hits, labels)
    coef = lr.coef_[0]
    model_weight = round(float(coef[0]), 4)
    if not model_weight > 0:  # also catches nan
        raise TuneError(
            f"the fitted model weight is {model_weight:g}: on this mail the model's log-odds do not "
            "predict the labels (is the mail labelled the right way round?)"
        )
    rule_weights = {n: round(float(POINTS_PER_NAT * w), 3) for n, w in zip(names, coef[1:])}
    return TuneReport(
        model_weight=model_weight,
        rule_weights=rule_weights,
        before=metrics(labels, scores, threshold),
        after=metrics(labels, cv_points, threshold),
        n_ham=n_ham,
        n_spam=n_spam,
        n_trained=n_trained,
        n_skipped=n_trained if skip_trained else 0,
        unpriced=unpriced,
    )


def overlap_warning(report: TuneReport, n_total: int) -> str | None:
    """The stderr warning when the labelled mail overlaps the model's
    training mail (None when it does not)."""
    if not report.n_trained:
        return None
    share = f"{report.n_trained:,} of {n_total:,} labelled messages ({100 * report.n_trained / n_total:.0f}%)"
    if report.n_skipped:
        return (
            f"tune: left out {share}: the model was trained on them (they are in its ledger); "
            f"tuned on the other {report.n_ham + report.n_spam:,}"
        )
    return (
        f"tune: WARNING: {share} are mail the model was trained on (they are in its ledger). "
        "On those its log-odds are overconfident (it has seen the answers): it separates them almost "
        "perfectly, so the fit finds the rules worthless and sets their points near zero. Tune on mail "
        "the model has not seen, or add --skip-trained to leave those messages out."
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
