"""The one object every entry point uses: config + model, and the single
path raw bytes -> parse -> features -> model (+ rules) -> Verdict.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import Config, user_model_path
from .model import LinearModel
from .parse import ParsedMessage, parse
from .report import strip_verdict_headers
from .rules import Context, NetworkRules, headers, tld
from .score import Evidence, Verdict, action_for, model_points
from .tokens import Features, extract_bytes

#: the model that ships with mailsift (see models/default/README.md)
DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default-model.npz"


def resolve_model_path(config: Config, explicit: str | None = None) -> Path:
    """--model, then the config's model.path, then the user's own trained
    model if there is one, then the shipped default."""
    if explicit:
        return Path(explicit).expanduser()
    if config.model.path:
        return Path(config.model.path).expanduser()
    own = user_model_path()
    return own if own.is_file() else DEFAULT_MODEL


class Filter:
    """Scores messages.  Load once, call :meth:`score` many times.

    >>> f = Filter()                       # doctest: +SKIP
    >>> f.score(open("msg.eml", "rb").read()).action
    'accept'

    ``model`` may be given as an object (evaluation does), else it is loaded
    from ``model_path`` / the config / the default locations.
    """

    def __init__(
        self,
        config: Config | None = None,
        model_path: str | None = None,
        model: LinearModel | None = None,
    ):
        self.config = config or Config()
        if model is not None:
            self.model, self.model_path = model, Path(model_path or "(in memory)")
        else:
            self.model_path = resolve_model_path(self.config, model_path)
            self.model = LinearModel.load(self.model_path)
        dns = self.config.dns
        self.network = NetworkRules(
            self.config.dnsbl, dns.servers, dns.timeout, dns.deadline, self.config.auth, self.config.network
        )

    @property
    def is_generic(self) -> bool:
        """True for a model not trained on this user's mail (the default)."""
        return bool(self.model.info.get("generic", False))

    @property
    def model_weight(self) -> float:
        m = self.config.model
        return m.default_weight if self.is_generic else m.weight

    def score(self, raw: bytes, evidence: int = 6, context: Context | None = None) -> Verdict:
        """Verdict for one raw message; ``evidence`` strongest features are
        named in each direction (0 to skip naming, which is cheaper);
        ``context`` is what the SMTP session knows (client address, HELO,
        envelope sender) for the network rules.  Filters' verdict headers
        are removed first: a score never reads a verdict (forged or ours);
        DKIM still verifies the message as it was handed over."""
        clean = strip_verdict_headers(raw)
        msg = parse(clean)
        return self.verdict(msg, extract_bytes(clean, self.model.settings), evidence, context, raw=raw)

    def verdict(
        self,
        msg: ParsedMessage,
        feats: Features,
        evidence: int = 6,
        context: Context | None = None,
        raw: bytes | None = None,
    ) -> Verdict:
        """The scoring half of :meth:`score`, for callers that already hold
        the features (online evaluation learns from them afterwards).
        ``raw`` is the whole message (DKIM is verified on all of it, not on
        the parser's cut); default ``msg.raw``."""
        hits = tld.check(msg, context.mail_from if context else "", self.config.domains)
        hits += headers.check(msg)
        hits += self.network.check(msg, context, raw)
        if self.config.rule_weights:  # the operator's (or tune's) points win over the defaults
            weights = self.config.rule_weights
            hits = [replace(h, score=weights[h.name]) if h.name in weights else h for h in hits]
        log_odds = self.model.log_odds(self.model.margin(feats.vec))
        probability = 1.0 / (1.0 + math.exp(-max(min(log_odds, 700.0), -700.0)))
        weight = self.model_weight
        cap = self.config.model.default_cap if self.is_generic else None
        points = model_points(log_odds, weight, cap)
        total = points + sum(h.score for h in hits)
        th = self.config.thresholds
        return Verdict(
            probability=probability,
            log_odds=log_odds,
            score=total,
            action=action_for(total, th.add_header, th.reject),
            required=th.add_header,
            model_points=points,
            model_weight=weight,
            model_name=str(self.model_path),
            default_model=self.is_generic,
            model_cap=cap,
            evidence=self._evidence(feats, evidence) if evidence else [],
            hits=hits,
            defects=list(msg.defects),
        )

    def _evidence(self, feats: Features, n: int) -> list[Evidence]:
        """The n features pushing hardest each way, in calibrated log-odds."""
        if not len(feats.indices):
            return []
        contrib = self.model.contributions(feats.vec)
        order = np.argsort(contrib)
        top = [i for i in order[::-1][:n] if contrib[i] > 0]
        bottom = [i for i in order[:n] if contrib[i] < 0]
        names = feats.names(feats.indices[top + bottom])
        slope = self.model.platt[0]
        return [
            Evidence(names[int(feats.indices[i])], round(float(contrib[i]) * slope, 4)) for i in top + bottom
        ]
