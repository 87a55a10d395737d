"""Model probability + rule hits -> one score, an action and its explanation.

The score is in SpamAssassin-style points so operators can read it with the
habits they have: 5 points marks a message as spam, 10 rejects.  The model's
contribution is a continuous version of SpamAssassin's BAYES_xx bands:

    model points = weight * POINTS_PER_DECADE * log10(p / (1 - p))

so at weight 1 a message needs p >= 0.91 to reach 5 points on the model
alone, and p >= 0.99 to reach 10.  The shipped default model, which was not
trained on this user's mail, is squashed into +/- ``default_cap`` points: it
can mark a message but never reject it on its own.  Rule hits (a later layer)
add their own points to the same sum.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

POINTS_PER_DECADE = 5.0
ACCEPT, ADD_HEADER, REJECT = "accept", "add_header", "reject"


@dataclass
class RuleHit:
    """One rule that fired: its name, its points, what it means, what matched."""

    name: str
    score: float
    description: str
    detail: str = ""


@dataclass
class Evidence:
    """One model feature and its share of the model's margin."""

    feature: str
    weight: float


@dataclass
class Verdict:
    """Everything mailsift decided about a message, and why."""

    probability: float
    #: the model's calibrated log-odds (the probability without rounding to 0 or 1)
    log_odds: float
    score: float
    action: str
    required: float
    model_points: float
    model_weight: float
    model_name: str
    default_model: bool
    #: the model's points are squashed into +/- this (None: not capped)
    model_cap: float | None = None
    evidence: list[Evidence] = field(default_factory=list)
    hits: list[RuleHit] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    #: messages of each class the model has learned from this user's mail
    #: (the shipped default: what it was trained on)
    n_ham: int = 0
    n_spam: int = 0
    #: a user's model that ``learn`` began as a copy of the shipped default
    started_from_default: bool = False
    #: share of the shipped default's points added to your model's in
    #: ``model_points`` (1 for the default itself and for your model started as
    #: a copy of it, 0 for your model alone)
    default_share: float = 0.0
    #: the default model blended in ("" when none)
    blended_with: str = ""
    #: messages per class at which a model of your own stops being blended
    blend_until: int = 0
    #: whose model scored it ("" the site's alone), that user's share of
    #: ``log_odds``, the messages they have learned, and whether the shared
    #: store was down (their share then comes from the last known values)
    user: str = ""
    user_log_odds: float = 0.0
    user_spam: int = 0
    user_ham: int = 0
    user_stale: bool = False
    #: with a shared store (``[store] url``): the site's learns kept there
    #: were read (``site_learned``), their share of ``log_odds``, the
    #: messages learned so, and whether the store was down (last known values)
    site_learned: bool = False
    site_log_odds: float = 0.0
    site_spam: int = 0
    site_ham: int = 0
    site_stale: bool = False

    @property
    def stale(self) -> bool:
        """Scored with last known values from the shared store (it was down)."""
        return self.user_stale or self.site_stale

    @property
    def is_spam(self) -> bool:
        return self.action != ACCEPT

    def to_dict(self) -> dict:
        d = asdict(self)
        d["is_spam"] = self.is_spam
        for key in ("score", "model_points"):
            d[key] = round(d[key], 3)
        return d

    def summary(self) -> str:
        """The one line ``mailsift score`` prints."""
        label = "spam" if self.is_spam else "ham"
        user = f" user={self.user}" if self.user else ""
        return (
            f"{label} score={self.score:.2f} required={self.required:g} "
            f"p={self.probability:.4f} action={self.action} model={self.model_name} "
            f"learned_ham={self.n_ham} learned_spam={self.n_spam} "
            f"default_share={self.default_share:.2f}{user}"
        )

    def standing(self) -> str:
        """Where the model stands, in words: what it learned, and how much of
        the shipped default is in the score."""
        counts = f"{self.n_ham} ham + {self.n_spam} spam"
        if self.default_model:
            return f"shipped default model (trained on {counts}, not your mail), weight {self.model_weight:g}"
        if self.started_from_default:
            return (
                f"your model, started from the shipped default: {counts} of yours learned "
                f"since; scored like the default, weight {self.model_weight:g}"
            )
        if self.blended_with:
            return (
                f"your model: {counts} learned; blended with the shipped default "
                f"({self.blended_with}), whose points are added at {self.default_share:.0%} "
                f"until {self.blend_until} of each class are learned"
            )
        return f"your model: {counts} learned; weight {self.model_weight:g}, the default is not blended in"


def model_points(log_odds: float, weight: float, cap: float | None = None) -> float:
    """Model contribution in points from the calibrated log-odds (natural
    log).  With a cap, squashed smoothly into (-cap, cap) by cap*tanh(x/cap):
    bounded, but still strictly increasing, so messages keep their order."""
    points = weight * POINTS_PER_DECADE * log_odds / math.log(10)
    if cap is not None:
        points = cap * math.tanh(points / cap)
    return points


def action_for(score: float, add_header: float, reject: float) -> str:
    if score >= reject:
        return REJECT
    if score >= add_header:
        return ADD_HEADER
    return ACCEPT


def explain(verdict: Verdict) -> str:
    """The whole arithmetic of a verdict, for ``mailsift score --explain``."""
    lines = [verdict.summary(), ""]
    lines.append(f"model   {verdict.model_name}: {verdict.standing()}")
    formula = f"{verdict.model_weight:g} x {POINTS_PER_DECADE:g} x log10 odds"
    if verdict.model_cap is not None:
        formula = f"{verdict.model_cap:g} x tanh({formula} / {verdict.model_cap:g})"
    if verdict.blended_with:
        s = verdict.default_share
        formula = f"{formula} of your model + {s:.2f} x the default's points"
    if verdict.site_learned:
        stale = "; the store is down: last known values" if verdict.site_stale else ""
        lines.append(
            f"site    learned through the shared store: {verdict.site_log_odds:+.3f} log-odds "
            f"({verdict.site_spam} spam, {verdict.site_ham} ham){stale}"
        )
    if verdict.user:
        stale = "; the store is down: last known values" if verdict.user_stale else ""
        lines.append(
            f"user    {verdict.user}: {verdict.user_log_odds:+.3f} log-odds from what they learned "
            f"({verdict.user_spam} spam, {verdict.user_ham} ham){stale}"
        )
    lines.append(
        f"        p(spam) = {verdict.probability:.6f} -> {verdict.model_points:+.2f} points (= {formula})"
    )
    for hit in verdict.hits:
        detail = f"  [{hit.detail}]" if hit.detail else ""
        lines.append(f"rule    {hit.name:<24} {hit.score:+.2f}  {hit.description}{detail}")
    lines.append(f"total   {verdict.score:+.2f} points; add header at {verdict.required:g}")
    if verdict.default_model:
        cap = f" (its points are capped at ±{verdict.model_cap:g})" if verdict.model_cap else ""
        lines.append(
            f"note    the default model is not trained on your mail: it can mark a message{cap} "
            "but never reject one on its own; train on your own mail with 'mailsift train' "
            "for full weight"
        )
    spam_side = [e for e in verdict.evidence if e.weight > 0]
    ham_side = [e for e in verdict.evidence if e.weight < 0]
    lines.append("")
    lines.append("strongest features toward spam (their share of the log odds):")
    lines += [f"  {e.weight:+.3f}  {e.feature}" for e in spam_side] or ["  (none)"]
    lines.append("strongest features toward ham:")
    lines += [f"  {e.weight:+.3f}  {e.feature}" for e in ham_side] or ["  (none)"]
    if verdict.defects:
        lines.append("")
        lines.append("message defects: " + "; ".join(verdict.defects[:10]))
    return "\n".join(lines)
