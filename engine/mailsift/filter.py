"""The one object every entry point uses: config + model, and the single
path raw bytes -> parse -> features -> model (+ rules) -> Verdict.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .config import Config, user_model_path
from .model import LinearModel
from .parse import parse
from .score import Evidence, Verdict, action_for, model_points
from .tokens import extract

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
    """

    def __init__(self, config: Config | None = None, model_path: str | None = None):
        self.config = config or Config()
        self.model_path = resolve_model_path(self.config, model_path)
        self.model = LinearModel.load(self.model_path)

    @property
    def is_generic(self) -> bool:
        """True for a model not trained on this user's mail (the default)."""
        return bool(self.model.info.get("generic", False))

    @property
    def model_weight(self) -> float:
        m = self.config.model
        return m.default_weight if self.is_generic else m.weight

    def score(self, raw: bytes, evidence: int = 6) -> Verdict:
        """Verdict for one raw message; ``evidence`` strongest features are
        named in each direction (0 to skip naming, which is cheaper)."""
        msg = parse(raw)
        feats = extract(msg, self.model.settings)
        margin = self.model.margin(feats.vec)
        a, c = self.model.platt
        log_odds = a * margin + c
        probability = 1.0 / (1.0 + math.exp(-max(min(log_odds, 700.0), -700.0)))
        weight = self.model_weight
        points = model_points(log_odds, weight)
        total = points  # rule hits will add here
        th = self.config.thresholds
        ev: list[Evidence] = []
        if evidence and len(feats.indices):
            contrib = self.model.contributions(feats.vec)
            order = np.argsort(contrib)
            top = [i for i in order[::-1][:evidence] if contrib[i] > 0]
            bottom = [i for i in order[:evidence] if contrib[i] < 0]
            names = feats.names(feats.indices[top + bottom])
            ev = [
                Evidence(names[int(feats.indices[i])], round(float(contrib[i]) * a, 4)) for i in top + bottom
            ]
        return Verdict(
            probability=probability,
            score=round(total, 3),
            action=action_for(total, th.add_header, th.reject),
            required=th.add_header,
            model_points=round(points, 3),
            model_weight=weight,
            model_name=str(self.model_path),
            default_model=self.is_generic,
            evidence=ev,
            hits=[],
            defects=list(msg.defects),
        )
