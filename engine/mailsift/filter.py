"""The one object every entry point uses: config + model, and the single
path raw bytes -> parse -> features -> model (+ user) (+ rules) -> Verdict.

With a user (``score(raw, user="alice")``) the verdict adds that user's
learned share to the site model's log-odds and that user's address lists to
the site's (``users.py``); without one it is the site's alone.  With a
shared store (``[store] url``) the site's own learns are kept there too, as
a delta over the site model file under the reserved key ``store.SITE``
(so every node scores with them), and every verdict, a user's included,
adds that delta: user log-odds = site model + site delta + user delta.

A model trained on a little of the user's mail is blended with the shipped
default until it has learned enough: model points = own points + share x
the default's points (see :func:`default_share`, and models/default/README.md
for the measurements behind the rule), so a user who has trained a little is
not left with a model that knows less than the default did.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import Config, user_model_path
from .model import LinearModel
from .parse import MAX_PARSE_BYTES, ParsedMessage, parse
from .report import strip_verdict_headers
from .rules import Context, NetworkRules, headers, tld
from .rules import lists as address_lists
from .rules.lists import AddressLists
from .score import Evidence, RuleHit, Verdict, action_for, model_points
from .store import SITE, StoreError, user_name
from .tokens import Features, extract, extract_bytes
from .users import Users, UserView, feature_space

log = logging.getLogger("mailsift.filter")

#: the model that ships with mailsift (see models/default/README.md)
DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default-model.npz"

#: :meth:`Filter.learn_site` of a message the model file was trained on as
#: the class asked: what undoing a store learn of the other class answered,
#: as the learn's outcome (queued stays queued)
_FILE_KNOWS = {"unlearned": "relabelled", "not-learned": "already-learned", "other-class": "already-learned"}

#: ``info["started_from"]`` of a user's model that ``learn`` created as a copy
#: of the shipped default
FROM_DEFAULT = "default"


def resolve_model_path(config: Config, explicit: str | None = None) -> Path:
    """--model, then the config's model.path, then the user's own trained
    model if there is one, then the shipped default."""
    if explicit:
        return Path(explicit).expanduser()
    if config.model.path:
        return Path(config.model.path).expanduser()
    own = user_model_path()
    return own if own.is_file() else DEFAULT_MODEL


def default_share(n_ham: int, n_spam: int, full_at: int) -> float:
    """Share of the shipped default's points added to the points of a model
    that has learned ``n_ham`` ham and ``n_spam`` spam: it falls linearly with
    the smaller class, from 1 (nothing learned) to 0 at ``full_at`` messages
    of each class; the smaller class decides because a model that has seen
    one class only has learned the class balance, not what separates the two.
    ``full_at`` 0 turns blending off."""
    if full_at <= 0:
        return 0.0
    return max(0.0, 1.0 - min(n_ham, n_spam) / full_at)


def start_from_default(default_path: Path = DEFAULT_MODEL) -> LinearModel:
    """A new own model for a user who has not trained one: the shipped
    default's weights, with nothing learned from this user yet (counts and
    ledger empty; the default's own counts are kept in ``info``).  Learning
    then moves this copy; the shipped file is only read."""
    model = LinearModel.load(default_path)
    model.info = {
        "generic": False,
        "started_from": FROM_DEFAULT,
        "default_counts": {"n_ham": model.n_ham, "n_spam": model.n_spam},
        "default_trained_at": model.trained_at,
    }
    model.n_ham = model.n_spam = 0
    model.ledger.digests.clear()
    return model


class Filter:
    """Scores messages.  Load once, call :meth:`score` many times.

    >>> f = Filter()                       # doctest: +SKIP
    >>> f.score(open("msg.eml", "rb").read()).action
    'accept'

    ``model`` may be given as an object (evaluation does), else it is loaded
    from ``model_path`` / the config / the default locations.  A model loaded
    from a file is blended with the shipped default while it has learned
    fewer than ``model.blend_until`` messages of a class; a model given as an
    object is used alone (evaluation measures the learner) unless ``base``
    names the model to blend it with, or ``from_file`` says it was read from
    ``model_path`` (the service reads the bytes itself, to hand the very same
    file to its workers: it must score as ``mailsift score`` does).  ``users``:
    where per-user state lives (default: opened from ``[store]`` the first
    time a user is named).  ``shared_site``: read (and learn) the site's
    delta in the shared store (default: when ``[store] url`` is set;
    evaluation turns it off to measure the model alone).
    """

    def __init__(
        self,
        config: Config | None = None,
        model_path: str | None = None,
        model: LinearModel | None = None,
        base: LinearModel | None = None,
        users: Users | None = None,
        shared_site: bool | None = None,
        replay: bool = True,
        from_file: bool = False,
    ):
        self.config = config or Config()
        if model is not None:
            self.model, self.model_path = model, Path(model_path or "(in memory)")
        else:
            self.model_path = resolve_model_path(self.config, model_path)
            self.model = LinearModel.load(self.model_path)
        #: the shipped default this model is blended with, and its share
        self.base: LinearModel | None = None
        self.base_path: Path | None = None
        self.base_share = 0.0
        if not self.uses_default_scale:
            share = default_share(self.model.n_ham, self.model.n_spam, self.config.model.blend_until)
            if share > 0 and (base is not None or model is None or from_file):
                self.base = base if base is not None else LinearModel.load(DEFAULT_MODEL)
                self.base_path = Path("(in memory)") if base is not None else DEFAULT_MODEL
                self.base_share = share
        dns = self.config.dns
        self.network = NetworkRules(
            self.config.dnsbl, dns.servers, dns.timeout, dns.deadline, self.config.auth, self.config.network
        )
        self.site_lists = AddressLists.of(self.config.lists.allow, self.config.lists.block)
        #: the feature space users' learned sums are kept under (store keys)
        self.space = feature_space(self.model.settings)
        self._users = users
        #: whether the users opened on first use replay queued learns (False in a scoring
        #: worker: one writer, the service, replays and counts)
        self._replay = replay
        self.shared_site = bool(self.config.store.url) if shared_site is None else shared_site

    @property
    def users(self) -> Users:
        """Per-user state, opened from ``[store]`` on first use."""
        if self._users is None:
            self._users = Users.open(self.config, replay=self._replay)
        return self._users

    @property
    def is_generic(self) -> bool:
        """True for a model not trained on this user's mail (the default)."""
        return bool(self.model.info.get("generic", False))

    @property
    def started_from_default(self) -> bool:
        """True for a user's model that ``learn`` began as a copy of the default."""
        return self.model.info.get("started_from") == FROM_DEFAULT

    @property
    def uses_default_scale(self) -> bool:
        """The default, or a copy of it the user's clicks have moved: scored at
        the default's weight and cap, and never blended (it is the default)."""
        return self.is_generic or self.started_from_default

    @property
    def model_weight(self) -> float:
        m = self.config.model
        return m.default_weight if self.uses_default_scale else m.weight

    def score(
        self, raw: bytes, evidence: int = 6, context: Context | None = None, user: str | None = None
    ) -> Verdict:
        """Verdict for one raw message; ``evidence`` strongest features are
        named in each direction (0 to skip naming, which is cheaper);
        ``context`` is what the SMTP session knows (client address, HELO,
        envelope sender) for the network rules; ``user`` whose model and
        lists to add (None: the site's alone).  Filters' verdict headers
        are removed first: a score never reads a verdict (forged or ours);
        DKIM still verifies the message as it was handed over."""
        msg, feats = self.features(raw)
        return self.verdict(msg, feats, evidence, context, raw=raw, user=user)

    def features(self, raw: bytes) -> tuple[ParsedMessage, Features]:
        """The parsed message and the site model's features for it: what
        scoring and per-user learning both read."""
        kept = strip_verdict_headers(raw)  # bounded: a flood of them is cut, not scanned whole
        msg = parse(kept)
        settings = self.model.settings
        # a v1 model reads the parse: this one (extract_bytes would parse
        # ``kept`` again, to the same message), before the defect below
        feats = extract(msg, settings) if settings.scheme != "raw" else extract_bytes(kept, settings)
        if len(raw) > MAX_PARSE_BYTES and len(kept) <= MAX_PARSE_BYTES:
            # the size is still what the sender sent: say so, as parse would have
            msg.defects.append(f"truncated: {len(raw)} bytes, {len(kept)} left without verdict headers")
        return msg, feats

    def site_log_odds(self, feats: Features) -> float:
        """The site model's calibrated log-odds for these features."""
        return float(self.model.log_odds(self.model.margin(feats.vec)))

    def learn_user(self, raw: bytes, spam: bool | None, user: str, forget: bool = False) -> str:
        """Learn (or with ``forget`` unlearn) ``raw`` for ``user`` only: the
        site model is not changed, nor any other user.  Returns the outcome
        of :meth:`Users.learn` (learned, already-learned, relabelled,
        unlearned, not-learned, other-class, queued)."""
        from .train import message_digest

        raw = strip_verdict_headers(raw)
        _, feats = self.features(raw)
        digest = message_digest(raw)
        site = self.site_log_odds(feats)
        if self.shared_site:  # the user's step is taken on top of what the site learned
            view, _ = self._site_view(feats)
            site += view.log_odds if view is not None else 0.0
        # user_name refuses store.SITE too: only learn_site learns for the site
        return self.users.learn(user_name(user), feats.vec, site, spam, digest, self.space, forget)

    def learn_site(self, raw: bytes, spam: bool | None, forget: bool = False) -> str:
        """Learn (or with ``forget`` unlearn) ``raw`` for the site in the
        shared store (``[store] url``): the site's delta, ledger and outage
        queue are a user's under the reserved key :data:`store.SITE`, so a
        click on any node is seen by all of them; the model file is only
        read.  Its ledger still counts: a message it was trained on as this
        class is already learned (a store learn of the other class is taken
        back, reported relabelled); as the other class, the store learns it
        (relabelled).  An unlearn takes back what the store learned; a
        message only in the model file stays until the next train
        (not-learned).  Returns :meth:`Users.learn`'s outcomes."""
        from .train import message_digest

        raw = strip_verdict_headers(raw)
        _, feats = self.features(raw)
        digest = message_digest(raw)
        site = self.site_log_odds(feats)

        def learn(label: bool | None, undo: bool) -> str:
            return self.users.learn(SITE, feats.vec, site, label, digest, self.space, undo)

        trained = self.model.ledger.digests.get(digest)
        if forget or trained is None:
            return learn(spam, forget)
        if bool(trained[0]) == spam:
            # the file knows it as this class: only a store learn of the other class can be undone
            outcome = learn(not spam, True)
            return _FILE_KNOWS.get(outcome, outcome)
        outcome = learn(spam, False)
        return "relabelled" if outcome == "learned" else outcome

    def _site_view(self, feats: Features) -> tuple[UserView | None, list[RuleHit]]:
        """The site's delta in the shared store, or none with a zero-point
        hit saying why (state that cannot be read never costs mail)."""
        try:
            return self.users.view(SITE, feats.vec, self.space), []
        except StoreError as exc:
            log.error("scored without the site's learns in the store: %s", exc)
            return None, [
                RuleHit("SITE_STATE_ERROR", 0.0, "site learns unreadable: site model file only", str(exc))
            ]

    def _user_view(self, user: str, feats: Features) -> tuple[UserView | None, list[RuleHit]]:
        """The user's share, or the site's alone with a zero-point hit
        saying why (a user's state that cannot be read never costs mail)."""
        try:
            return self.users.view(user_name(user), feats.vec, self.space), []
        except StoreError as exc:
            log.error("user %r scored with the site model only: %s", user, exc)
            return None, [
                RuleHit("USER_STATE_ERROR", 0.0, "user state unreadable: site model only", str(exc))
            ]

    def verdict(
        self,
        msg: ParsedMessage,
        feats: Features,
        evidence: int = 6,
        context: Context | None = None,
        raw: bytes | None = None,
        user: str | None = None,
    ) -> Verdict:
        """The scoring half of :meth:`score`, for callers that already hold
        the features (online evaluation learns from them afterwards).
        ``raw`` is the whole message (DKIM is verified on all of it, not on
        the parser's cut); default ``msg.raw``."""
        site_view, hits = self._site_view(feats) if self.shared_site else (None, [])
        view, user_hits = self._user_view(user, feats) if user else (None, [])
        hits += user_hits
        mail_from = context.mail_from if context else ""
        hits += tld.check(msg, mail_from, self.config.domains)
        hits += headers.check(msg)
        net = self.network.run(msg, context, raw)
        hits += net.hits
        hits += address_lists.check(
            msg,
            mail_from,
            net.auth,
            self.site_lists,
            view.lists if view else None,
            view.name if view else "",
            net.unchecked,
        )
        if self.config.rule_weights:  # the operator's (or tune's) points win over the defaults
            weights = self.config.rule_weights
            hits = [replace(h, score=weights[h.name]) if h.name in weights else h for h in hits]
        log_odds = self.site_log_odds(feats)
        if site_view is not None and site_view.log_odds:
            log_odds += site_view.log_odds
        if view is not None and view.log_odds:
            log_odds += view.log_odds
        generic = self.is_generic
        from_default = self.started_from_default
        m = self.config.model
        default_scale = generic or from_default  # self.uses_default_scale, read once
        weight = m.default_weight if default_scale else m.weight
        cap = m.default_cap if default_scale else None
        points = model_points(log_odds, weight, cap)
        named = self._evidence(self.model, feats, evidence, 1.0) if evidence else []
        share = self.base_share
        if self.base is not None and share > 0:
            # the default reads its own features (its profile may differ)
            bs = self.base.settings
            if bs == self.model.settings:
                base_feats = feats
            elif bs.scheme == "raw":  # the message as parsed (verdict headers already cut)
                base_feats = extract_bytes(msg.raw, bs)
            else:
                base_feats = extract(msg, bs)
            base_log_odds = self.base.log_odds(self.base.margin(base_feats.vec))
            base_points = model_points(base_log_odds, m.default_weight, m.default_cap)
            # added, not averaged: the own model keeps its full say and the
            # default's evidence counts for its share on top (measured better
            # than a weighted average at every size: models/default/README.md)
            points = share * base_points + points
            log_odds = share * base_log_odds + log_odds
            if evidence:
                named = self._merge(named + self._evidence(self.base, base_feats, evidence, share), evidence)
        probability = 1.0 / (1.0 + math.exp(-max(min(log_odds, 700.0), -700.0)))
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
            default_model=generic,
            model_cap=cap,
            evidence=named,
            hits=hits,
            defects=list(msg.defects),
            n_ham=self.model.n_ham,
            n_spam=self.model.n_spam,
            started_from_default=from_default,
            # a copy of the default that clicks moved holds all of the default
            default_share=1.0 if generic or from_default else round(share, 4),
            blended_with=str(self.base_path) if self.base is not None else "",
            blend_until=m.blend_until,
            user=view.name if view else "",
            user_log_odds=view.log_odds if view else 0.0,
            user_spam=view.n_spam if view else 0,
            user_ham=view.n_ham if view else 0,
            user_stale=view.stale if view else False,
            site_learned=site_view is not None,
            site_log_odds=site_view.log_odds if site_view else 0.0,
            site_spam=site_view.n_spam if site_view else 0,
            site_ham=site_view.n_ham if site_view else 0,
            site_stale=site_view.stale if site_view else False,
        )

    @staticmethod
    def _merge(evidence: list[Evidence], n: int) -> list[Evidence]:
        spam = sorted((e for e in evidence if e.weight > 0), key=lambda e: -e.weight)[:n]
        ham = sorted((e for e in evidence if e.weight < 0), key=lambda e: e.weight)[:n]
        return spam + ham

    @staticmethod
    def _evidence(model: LinearModel, feats: Features, n: int, share: float) -> list[Evidence]:
        """The n features pushing hardest each way, in calibrated log-odds
        (times ``share``, the model's part in a blend)."""
        if not len(feats.indices):
            return []
        contrib = model.contributions(feats.vec)
        order = np.argsort(contrib)
        top = [i for i in order[::-1][:n] if contrib[i] > 0]
        bottom = [i for i in order[:n] if contrib[i] < 0]
        names = feats.names(feats.indices[top + bottom])
        slope = model.platt[0] * share
        return [
            Evidence(names[int(feats.indices[i])], round(float(contrib[i]) * slope, 4)) for i in top + bottom
        ]
