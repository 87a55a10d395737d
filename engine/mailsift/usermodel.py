"""A user's model: the site model plus what that user taught it.

The user's share is a sparse vector of per-slot weights added to the site
model's calibrated log-odds::

    user log-odds = site log-odds + sum_i w_i * u_i

where ``u`` is the message's feature vector scaled to unit length (so the
arithmetic is the same whatever values the site model's features carry).
Only ``w`` is learned, by a logistic step on the *combined* log-odds: a
click on a message the site already gets right moves little, one it gets
wrong moves a lot.  The weights are AdaGrad in its dual-averaging form
(Duchi, Hazan and Singer 2011, section 3): each slot keeps two sums over the
messages the user has learned,

    S_i = sum of g * u_i          (the gradients)
    A_i = sum of g^2 * z_i^2      (their squares; z_i = u_i * sqrt(n), so a
                                   slot present in a message counts about 1)

and its weight is ``w_i = rate * S_i / sqrt(eps + A_i)``: a slot that many
learned messages share moves less per message, a new one moves at ``rate``.
Why this form rather than AdaGrad's usual running update:

* every learn only *adds* to the sums, so two learns commute: two MX hosts
  clicking at once add their increments to Redis (``HINCRBYFLOAT``-like, in
  one script) and neither update is lost, whatever order they land in;
* unlearning subtracts exactly what the learn added (the ledger keeps the
  learn's gradient ``g``; the slots and ``u`` come from the message again),
  so unlearn is exact to float64 rounding even after other learns, and a
  user who unlearns everything is back to the site model exactly (slots
  whose sums return to zero are deleted);
* a new user has no sums: the site model exactly.

``rate`` sets how far one click moves the learned message itself: about
``rate * g / sqrt(eps + g^2)`` log-odds, 0.71 x rate for a message the site
got completely wrong (g = 1); how it was chosen is at ``UserParams.rate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: gradients smaller than this are stored as this (with the label's sign): a
#: learn whose gradient is exactly 0 must still leave a trace to unlearn
MIN_GRADIENT = 1e-6
#: a slot whose squared-gradient sum falls below this after an unlearn holds
#: nothing any more (float64 rounding residue) and is deleted
EMPTY = 1e-15


@dataclass(frozen=True)
class UserParams:
    """The per-user learner's settings."""

    #: log-odds one click moves a fresh message by, at most (x 0.71 at g = 1).
    #: benchmarks/user_learning.py, default model as the site model, clicks on
    #: the verdicts it got wrong, (1-AUC)%: trec07p-dev's first 3,000 (inside
    #: train.index) rate 2 2.93, 4 1.81, 8 0.98, 16 0.46, 32 0.33 (site alone
    #: 5.77); modern, shuffled, as a check: 4 0.088, 8 0.068, 16 0.096, 32
    #: 0.123 (site 0.320).  8 is the largest step not worse on the second.
    rate: float = 8.0
    #: added to a slot's squared-gradient sum under the square root
    eps: float = 1.0
    #: the user model reads one slot in ``sample`` (slot % sample == 0, the
    #: same slots for every message), so a user's memory and the store's work
    #: per message shrink by this factor.  benchmarks/user_learning.py at rate
    #: 8, clicks on mistakes, (1-AUC)%: trec07p-dev 1/1 0.983, 1/2 0.917, 1/4
    #: 0.977; modern 1/1 0.068, 1/4 0.070, 1/8 0.073: a quarter loses nothing
    #: measurable (a message has ~2,300 slots; ~570 are read)
    sample: int = 4


@dataclass(frozen=True)
class UnitVec:
    """One message as the user model sees it: sorted unique slots, the
    values scaled to unit length, and z^2 = u^2 * n (the AdaGrad count)."""

    slots: np.ndarray  # uint32
    u: np.ndarray  # float64
    z2: np.ndarray  # float64

    @classmethod
    def of(cls, vec, sample: int = 1) -> UnitVec:
        idx, val = vec
        slots = np.asarray(idx, dtype=np.uint32)
        v = np.asarray(val, dtype=np.float64)
        if sample > 1:
            keep = slots % sample == 0
            slots, v = slots[keep], v[keep]
        norm = float(np.sqrt(np.dot(v, v)))
        u = v / norm if norm > 0 else np.zeros_like(v)
        return cls(slots, u, u * u * len(u))


def weights(params: UserParams, s: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per-slot weights from the two sums (slots without sums: 0)."""
    return params.rate * s / np.sqrt(params.eps + np.maximum(a, 0.0))


def adjustment(params: UserParams, x: UnitVec, s: np.ndarray, a: np.ndarray) -> float:
    """The user's share of the log-odds for message ``x`` (``s``, ``a``: the
    sums at ``x.slots``).  Exactly 0.0 when the user has learned nothing
    that shares a slot with it."""
    if not len(s) or not s.any():
        return 0.0
    return float(np.dot(weights(params, s, a), x.u))


def gradient(log_odds: float, spam: bool) -> float:
    """The logistic gradient y - p at the combined log-odds, kept away from
    0 so that the learn can be found and reversed."""
    p = 1.0 / (1.0 + math.exp(-max(min(log_odds, 60.0), -60.0)))
    g = (1.0 if spam else 0.0) - p
    if abs(g) < MIN_GRADIENT:
        g = MIN_GRADIENT if spam else -MIN_GRADIENT
    return g


@dataclass(frozen=True)
class Entry:
    """One ledger entry: the class a message was learned as, the gradient
    of its step (what unlearning subtracts), and when the click was made
    (``time.time()``), so a learn queued during an outage and replayed
    later never overrides a newer click on another node.  Entries written
    before clicks had a time read as time 0 and are written as they were."""

    spam: bool
    g: float
    at: float = 0.0

    def encode(self) -> str:
        if not self.at:
            return f"{int(self.spam)} {self.g!r}"
        return f"{int(self.spam)} {self.g!r} {self.at!r}"

    @classmethod
    def decode(cls, text: str | bytes | None) -> Entry | None:
        if text is None:
            return None
        if isinstance(text, bytes):
            text = text.decode("ascii")
        label, g, *at = text.split()
        return cls(label == "1", float(g), float(at[0]) if at else 0.0)


@dataclass(frozen=True)
class Change:
    """What one learn, relabel or unlearn does to a user's state: add
    ``ds``/``da`` at ``slots``, and move the ledger entry of ``digest`` from
    ``expected`` to ``entry`` (None: absent).  Stores apply it atomically and
    only if the ledger entry is still ``expected``."""

    slots: np.ndarray
    ds: np.ndarray
    da: np.ndarray
    digest: bytes
    expected: Entry | None
    entry: Entry | None
    d_spam: int
    d_ham: int


def plan(
    params: UserParams,
    x: UnitVec,
    site_log_odds: float,
    s: np.ndarray,
    a: np.ndarray,
    digest: bytes,
    previous: Entry | None,
    spam: bool | None,
    forget: bool,
    at: float = 0.0,
) -> tuple[str, Change | None]:
    """Decide one learn (``spam`` True/False) or unlearn (``forget``; ``spam``
    None for whichever class) against the user's current sums ``s``, ``a`` at
    ``x.slots`` and ledger entry ``previous``.  Returns the outcome (learned,
    already-learned, relabelled, unlearned, not-learned, other-class) and the
    change to apply (None: nothing changes).  ``at``: when the click was
    made, kept in the new ledger entry."""
    if forget:
        if previous is None:
            return "not-learned", None
        if spam is not None and previous.spam != spam:
            return "other-class", None
        g = previous.g
        return "unlearned", Change(
            x.slots,
            -g * x.u,
            -(g * g) * x.z2,
            digest,
            previous,
            None,
            -int(previous.spam),
            -int(not previous.spam),
        )
    if spam is None:
        raise ValueError("learning needs a class: spam=True or spam=False")
    if previous is not None and previous.spam == spam:
        return "already-learned", None
    s0, a0 = s, a
    if previous is not None:  # relabel: the old step comes off first
        s0 = s - previous.g * x.u
        a0 = a - previous.g * previous.g * x.z2
    g = gradient(site_log_odds + adjustment(params, x, s0, a0), spam)
    old = previous.g if previous is not None else 0.0
    change = Change(
        x.slots,
        (g - old) * x.u,
        (g * g - old * old) * x.z2,
        digest,
        previous,
        Entry(spam, g, at),
        int(spam) - int(previous is not None and previous.spam),
        int(not spam) - int(previous is not None and not previous.spam),
    )
    return ("relabelled" if previous is not None else "learned"), change
