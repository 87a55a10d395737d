"""The trainable classifier and its safe on-disk format.

The model is logistic regression on binary hashed features with one update
rule: a per-message logistic gradient step with per-feature AdaGrad step
sizes (``rate / sqrt(eps + sum of the feature's squared gradients)``), so a
feature seen in thousands of messages moves little and a new one moves at
``rate``; the part of a step that takes back evidence against the label is
limited to ``max_erosion`` log-odds, so one click on a young model does not
move every ham towards the threshold.  That one rule is what ``partial_fit`` (the online protocol and
``mailsift eval --online``), ``learn_one`` (a ``mailsift learn`` click) and
each pass of ``fit`` run.  ``fit`` makes ``epochs`` (6) shuffled passes and
averages the weights at the end of each, which ranked held-out mail better
than the last pass alone.  Every setting was chosen on
trec07p-dev/train.index only (models/default/README.md has the figures).

Margins are log-odds; ``fit`` calibrates them with Platt scaling fitted on
out-of-fold margins (:func:`fit_platt`; see ``train.py``).

On disk a model is one ``.npz`` file (no pickle: ``allow_pickle=False``) whose
``meta`` entry is UTF-8 JSON: format version, feature settings, training
counts, date, calibration.  Only touched slots are stored, weights and
AdaGrad sums as float32, so what was learned is saved exactly and ``unlearn``
after a reload reverses a ``learn`` as well as before.  Format-1 files (older
mailsift: float16 weights, L2-normalised features) still load and score as
they did.  Writes go to a temporary file in the same folder and are renamed
over the old file, so a running filter never reads half a model.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import io
import json
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .tokens import FeatureSettings

FORMAT = "mailsift-model"
FORMAT_VERSION = 2
#: versions this mailsift reads: 1 (float16 weights, v1 features) and 2
READ_VERSIONS = (1, 2)

#: one message as the model sees it: (sorted unique slots, feature values)
Vec = tuple[np.ndarray, np.ndarray]


class ModelError(Exception):
    """A model file is missing, corrupt, foreign or of an unknown version."""


@dataclass
class TrainParams:
    """Training settings, saved with the model.  Chosen on
    trec07p-dev/train.index alone (online over it, and a chronological
    half/half split inside it; models/default/README.md has the figures)."""

    #: AdaGrad base step.  Online (1-AUC)% over train.index with these
    #: features: 0.003 0.0045, 0.004 0.0043, 0.005 0.0044 (plain fixed
    #: steps: 0.0025 0.0056); 0.01 and above was far worse (0.0081+)
    rate: float = 0.004
    #: added to each feature's sum of squared gradients before the square
    #: root: the first step of a new feature is about rate / sqrt(eps)
    eps: float = 1.0
    #: shuffled passes of ``fit``; the weights are averaged over the passes
    #: (split inside train.index, (1-AUC)%: 1 pass 0.0009, 3 averaged 0.0003;
    #: first 5,000 -> last 6,000, a week later: 3 passes 0.0009, 6 and 10
    #: passes 0.0003, reference 0.0030; benchmarks/learner_select.py)
    epochs: int = 6
    seed: int = 0
    #: the most one step may take back from the evidence the model already
    #: holds against the label: the step's own-margin move summed over the
    #: message's features whose weights point the other way (a spam click
    #: eroding ham evidence), in log-odds; the part over new features and
    #: features that already agree is not limited.  0: no limit.  A young
    #: model's ham-evidence features are shared by most ham and have small
    #: AdaGrad sums, so one click eroding them moved every ham towards the
    #: threshold.  Chosen on trec07p-dev/train.index online and on the
    #: five-click scenario inside the 2002 train split (FPR on train ham the
    #: model did not see): 0 0.0043 / +0.45, 0.25 0.0050 / +0.17, 0.5 0.0044 /
    #: +0.17, 0.75 0.0043 / +0.28, 1 0.0042 / +0.34 ((1-AUC)% / worst click;
    #: models/default/README.md)
    max_erosion: float = 0.5
    #: the erosion limit holds up to this many learned messages (n_ham +
    #: n_spam) and grows in proportion beyond (twice as many, twice the limit):
    #: with a fixed limit a stream of 4,150 ham then the spam (the 2002
    #: all.index) was held back at every spam, online (1-AUC)% 0.0678 -> 0.3259
    #: (0.0772 with the growth).  450: the click bar's model size, so that
    #: model keeps the limit; not tuned
    erosion_grows_after: int = 450

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainParams:
        data = dict(data)
        # format-2 files of mailsift before max_erosion wrote max_move (always 0: no limit)
        if data.pop("max_move", 0.0):
            raise ValueError("max_move is no longer supported (retrain with 'mailsift train')")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        params = cls(**data)
        if not (
            0 < params.rate < 10
            and params.eps > 0
            and 1 <= params.epochs <= 100
            and params.max_erosion >= 0
            and params.erosion_grows_after >= 1
        ):
            raise ValueError(f"training settings out of range: {params}")
        return params


@dataclass
class Ledger:
    """Digests of messages the model has learned, so a repeated ``learn`` is
    noticed and ``unlearn`` can reverse exactly the step that was taken."""

    #: digest -> (label, gradient of the learn step; 0.0 for batch training)
    digests: dict[bytes, tuple[int, float]] = field(default_factory=dict)
    #: digest -> the factor ``max_erosion`` scaled the step's eroding part by,
    #: for learn steps it limited (absent: 1, not limited)
    scales: dict[bytes, float] = field(default_factory=dict)


#: ledger gradient of a learn step whose gradient was exactly 0
_TINY = 1e-30


def _sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def fit_platt(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling p = sigmoid(a*m + c), with Platt's smoothed targets so a
    perfectly separated training set does not produce infinite confidence."""
    m = np.asarray(margins, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0, 0.0
    t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    a, c = 1.0 / max(np.std(m), 1e-6), 0.0
    for _ in range(100):  # Newton's method on the two parameters
        p = _sigmoid(a * m + c)
        g = np.array([np.sum((p - t) * m), np.sum(p - t)])
        w = p * (1 - p) + 1e-12
        h = np.array([[np.sum(w * m * m), np.sum(w * m)], [np.sum(w * m), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, c = a - step[0], c - step[1]
        if np.abs(step).max() < 1e-9:
            break
    return float(a), float(c)


class LinearModel:
    """Online logistic regression over hashed features.

    ``X`` arguments are sequences of :data:`Vec` (``Features.vec`` of
    :func:`mailsift.tokens.extract`); ``y`` is True for spam.  Follows
    scikit-learn's ``fit / partial_fit / predict_proba`` naming so it reads
    like any other estimator.
    """

    def __init__(self, settings: FeatureSettings | None = None, params: TrainParams | None = None):
        self.settings = settings or FeatureSettings()
        self.params = params or TrainParams()
        self.w = np.zeros(1 << self.settings.n_bits, dtype=np.float32)
        #: AdaGrad: each slot's sum of squared gradients
        self.acc = np.zeros_like(self.w)
        self.b = 0.0  # only format-1 models have a bias
        self.platt = (1.0, 0.0)  # the margin of logistic regression is already log-odds
        self.n_ham = 0
        self.n_spam = 0
        self.trained_at = ""
        self.ledger = Ledger()
        self.info: dict = {}

    # -- scoring ---------------------------------------------------------
    def margin(self, x: Vec) -> float:
        idx, val = x
        return float(np.dot(self.w.take(idx), val)) + self.b  # take(): 25% faster than w[idx]

    def decision_function(self, X) -> np.ndarray:
        return np.array([self.margin(x) for x in X], dtype=np.float64)

    def log_odds(self, m: float | np.ndarray) -> float | np.ndarray:
        """Calibrated log-odds of spam for a margin (Platt scaling)."""
        a, c = self.platt
        return a * m + c

    def proba_of_margin(self, m: float | np.ndarray) -> float | np.ndarray:
        return _sigmoid(self.log_odds(np.asarray(m)))

    def predict_proba(self, X) -> np.ndarray:
        p = self.proba_of_margin(self.decision_function(X))
        return np.column_stack([1 - p, p])

    def contributions(self, x: Vec) -> np.ndarray:
        """Each feature's share of the margin (same order as the slots)."""
        idx, val = x
        return self.w[idx].astype(np.float64) * val

    # -- the one update rule ---------------------------------------------
    def step(self, x: Vec, spam: bool, margin: float | None = None) -> float:
        """One logistic gradient step towards the label, AdaGrad-scaled per
        feature, its eroding part limited by ``max_erosion``; returns the
        gradient ``y - p``.  ``margin`` may be passed when the caller has
        just scored ``x``."""
        return self._step(x, spam, margin)[0]

    def _step(self, x: Vec, spam: bool, margin: float | None = None) -> tuple[float, float]:
        """:meth:`step`, returning (gradient, scale of the eroding part):
        what :meth:`unstep` needs to reverse it."""
        # the weights are read once, for the margin and the move: a gather from
        # the 2**22 slots is a cache miss per feature, most of a step's time
        w = self.w.take(x[0])
        m = float(np.dot(w, x[1])) + self.b if margin is None else margin
        g = (1.0 if spam else 0.0) - 1.0 / (1.0 + math.exp(-max(min(m, 60.0), -60.0)))
        return g, self._move(x, g, w=w)

    def unstep(self, x: Vec, g: float, scale: float = 1.0) -> None:
        """Reverse :meth:`step` with gradient ``g`` and the eroding part's
        ``scale``: right after the step this gives back the same weights to
        float32 rounding."""
        self._move(x, g, scale)

    def _move(self, x: Vec, g: float, undo: float | None = None, w: np.ndarray | None = None) -> float:
        """Step forward (``undo`` None; returns the eroding part's scale)
        or take back a step whose eroding part was scaled by ``undo``.
        ``w``: the weights of ``x``'s features, if the caller has read them."""
        idx, val = x
        if w is None:
            w = self.w.take(idx)
        gv = np.float32(g) * val
        sq = gv * gv
        acc = self.acc.take(idx)
        if undo is None:
            acc += sq
        delta = np.float32(self.params.rate) * gv / np.sqrt(acc + np.float32(self.params.eps))
        if undo is not None:
            # a feature was eroding iff its weight before the step had the other
            # sign: with w = before + scale*delta that is (w - scale*delta)*delta < 0
            # (and then not for w - delta), so the one consistent reading is found
            back = w - np.float32(undo) * delta
            self.w[idx] = np.where(back * delta < 0, back, w - delta) if undo < 1 else w - delta
            self.acc[idx] = np.maximum(acc - sq, 0)
            return undo
        scale = 1.0
        budget = self.params.max_erosion * max(
            1.0, (self.n_ham + self.n_spam) / self.params.erosion_grows_after
        )
        # every feature moves the margin the same way, so the eroding part is at
        # most the whole move: most steps of a stream are far below the limit
        if budget and abs(float(np.dot(delta, val))) > budget:
            eroding = w * delta < 0
            eroded = abs(float(np.dot(delta[eroding], val[eroding])))
            if eroded > budget:
                scale = budget / eroded
                delta[eroding] *= np.float32(scale)
        self.acc[idx] = acc
        self.w[idx] = w + delta  # w[idx] += delta would gather the weights again
        return scale

    # -- training --------------------------------------------------------
    def partial_fit(self, X, y) -> LinearModel:
        """One online pass in the given order (the TREC immediate-feedback
        protocol), one :meth:`step` per message; counts are updated."""
        for x, spam in zip(X, y):
            self.step(x, bool(spam))
            self._count(bool(spam), 1)
        return self

    def fit(self, X, y) -> LinearModel:
        """Train from scratch: ``epochs`` shuffled passes of :meth:`step`;
        the weights are the mean of the weights at the end of each pass (the
        AdaGrad sums are kept, so later clicks step as the last pass did)."""
        y = np.asarray(y, dtype=bool)
        self.w = np.zeros_like(self.w)
        self.acc = np.zeros_like(self.w)
        self.b = 0.0
        self.n_spam = int(y.sum())  # the step's erosion limit reads how much the model learns
        self.n_ham = int(len(y) - self.n_spam)
        total = np.zeros_like(self.w)
        rng = np.random.default_rng(self.params.seed)
        order = np.arange(len(X))
        epochs = max(self.params.epochs, 1)
        for _ in range(epochs):
            rng.shuffle(order)
            for i in order:
                self.step(X[i], bool(y[i]))
            total += self.w
        self.w = total / np.float32(epochs)
        self.trained_at = _now()
        return self

    def _count(self, spam: bool, delta: int) -> None:
        if spam:
            self.n_spam = max(self.n_spam + delta, 0)
        else:
            self.n_ham = max(self.n_ham + delta, 0)

    def learn_one(self, x: Vec, spam: bool, digest: bytes) -> tuple[str, float]:
        """Learn one message (mail-client "mark as spam/ham") with the same
        :meth:`step` as online learning.  Returns (what happened, gradient).
        A message already learned with the same label is not learned again;
        one learned with the other label is first unlearned."""
        previous = self.ledger.digests.get(digest)
        status = "learned"
        if previous is not None:
            label, _ = previous
            if label == int(spam):
                return "already-learned", 0.0
            self.unlearn_one(x, digest)
            status = "relabelled"
        g, scale = self._step(x, spam)
        # a gradient of exactly 0 would read as "from batch training": keep it non-zero
        self.ledger.digests[digest] = (int(spam), g if g else _TINY)
        if scale < 1:
            self.ledger.scales[digest] = scale
        self._count(spam, 1)
        self.trained_at = _now()
        return status, g

    def unlearn_one(self, x: Vec, digest: bytes) -> tuple[str, int]:
        """Reverse the step ``learn_one`` took for this message.  Messages
        from batch training (0 in the ledger) can only be forgotten from the
        ledger: their influence is spread over the averaged weights."""
        entry = self.ledger.digests.pop(digest, None)
        if entry is None:
            return "not-learned", -1
        label, g = entry
        scale = self.ledger.scales.pop(digest, 1.0)
        if g:
            self.unstep(x, g, scale)
        self._count(bool(label), -1)
        return ("unlearned" if g else "forgotten"), label

    # -- persistence -----------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": "logistic-regression-adagrad",
            "features": self.settings.to_dict(),
            "train": self.params.to_dict(),
            "platt": list(self.platt),
            "n_ham": self.n_ham,
            "n_spam": self.n_spam,
            "trained_at": self.trained_at,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write: temporary file in the same folder, fsync, rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        nz = np.flatnonzero((self.w != 0) | (self.acc != 0)).astype(np.uint32)
        digests = list(self.ledger.digests.items())
        arrays = {
            "meta": np.frombuffer(json.dumps(self.metadata()).encode(), dtype=np.uint8),
            "slots": nz,
            "weights": self.w[nz],
            "accum": self.acc[nz],
            "bias": np.array([self.b], dtype=np.float64),
            "ledger_digest": np.array([d for d, _ in digests], dtype="S16").reshape(-1),
            "ledger_label": np.array([e[0] for _, e in digests], dtype=np.int8),
            "ledger_step": np.array([e[1] for _, e in digests], dtype=np.float64),
            "ledger_scale": np.array([self.ledger.scales.get(d, 1.0) for d, _ in digests], dtype=np.float64),
        }
        fd, tmp = tempfile.mkstemp(prefix=".mailsift-", suffix=".npz.tmp", dir=path.parent)
        try:
            os.fchmod(fd, _file_mode(path))
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, data: bytes | None = None) -> LinearModel:
        """Load a model file; any problem is a :class:`ModelError` naming the
        file.  Never unpickles, so a hostile file cannot run code.  With
        ``data`` the model is read from those bytes (``path`` only names it):
        the proxy's workers load exactly the bytes their parent verified."""
        path = Path(path)
        try:
            if data is None:
                with open(path, "rb") as fh:
                    data = fh.read()
            if not data.startswith(b"PK\x03\x04"):
                # else numpy reads it as .npy or pickle, and its error invites unpickling
                raise ModelError(f"{path}: not a mailsift model file (not an .npz archive)")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise ModelError(f"{path}: model file not found") from None
        except ValueError:  # an object (pickled) array inside the archive
            raise ModelError(f"{path}: not a mailsift model file (an entry is not a plain array)") from None
        except zlib.error as exc:  # a flipped block on disk, a bad copy
            raise ModelError(f"{path}: damaged model file (its compressed data is corrupt: {exc})") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelError(f"{path}: not a mailsift model file ({exc})") from None
        _check_shapes(path, arrays)
        if "meta" not in arrays:
            raise ModelError(f"{path}: not a mailsift model (an .npz file without mailsift metadata)")
        try:
            meta = json.loads(bytes(arrays["meta"].astype(np.uint8)).decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                fmt = meta.get("format") if isinstance(meta, dict) else None
                raise ModelError(f"{path}: not a mailsift model (format {fmt!r})")
            version = meta.get("format_version")
            if version not in READ_VERSIONS:
                raise ModelError(
                    f"{path}: model format version {version} is not supported "
                    f"(this mailsift reads versions {', '.join(map(str, READ_VERSIONS))}); "
                    "retrain with 'mailsift train'"
                )
            if version == 1:
                # format 1: v1 features; its training settings (lr, thick, ...) belong to
                # the old learner and are kept for the record only
                settings = FeatureSettings.from_dict({**meta["features"], "scheme": "v1"})
                params = TrainParams()
            else:
                settings = FeatureSettings.from_dict(meta["features"])
                params = TrainParams.from_dict(meta["train"])
            model = cls(settings, params)
            slots = arrays["slots"]
            if slots.size and int(slots.max()) >= model.w.size:
                raise ModelError(f"{path}: weight index out of range for n_bits={settings.n_bits}")
            slots = slots.astype(np.int64)
            if len(arrays["weights"]) != len(slots):
                raise ValueError("slots and weights differ in length")
            model.w[slots] = arrays["weights"].astype(np.float32)
            if version >= 2:
                if len(arrays["accum"]) != len(slots):
                    raise ValueError("slots and AdaGrad sums differ in length")
                model.acc[slots] = arrays["accum"].astype(np.float32)
            model.b = float(arrays["bias"][0])
            a, c = meta["platt"]
            model.platt = (float(a), float(c))
            model.n_ham, model.n_spam = int(meta["n_ham"]), int(meta["n_spam"])
            model.trained_at = str(meta.get("trained_at", ""))
            model.info = dict(meta.get("info", {}))
            if version == 1:
                model.info.setdefault("format_1_train", meta["train"])
            # files written before max_erosion have no scales: nothing was limited
            scales = arrays.get("ledger_scale", np.ones(len(arrays["ledger_digest"])))
            for d, lab, st, sc in zip(
                arrays["ledger_digest"], arrays["ledger_label"], arrays["ledger_step"], scales
            ):
                # format 1 kept the step of lr * gradient; both are only ever tested for 0 there
                digest = bytes(d).ljust(16, b"\0")
                model.ledger.digests[digest] = (int(lab), float(st))
                if not 0 < sc <= 1:
                    raise ValueError(f"ledger scale {float(sc)} outside (0, 1]")
                if sc < 1:
                    model.ledger.scales[digest] = float(sc)
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: corrupt mailsift model ({type(exc).__name__}: {exc})") from None
        if not (np.isfinite(model.w).all() and np.isfinite(model.acc).all() and np.isfinite(model.b)):
            raise ModelError(f"{path}: corrupt mailsift model (non-finite weights)")
        if (model.acc < 0).any():
            raise ModelError(f"{path}: corrupt mailsift model (negative AdaGrad sums)")
        return model


#: entry -> (dtype kinds it may have); every entry is one-dimensional
_ENTRIES = {
    "meta": "u",
    "slots": "iu",
    "weights": "f",
    "bias": "f",
    "ledger_digest": "S",
    "ledger_label": "iu",
    "ledger_step": "f",
}


def _check_shapes(path: Path, arrays: dict) -> None:
    """The archive's entries have the kinds and lengths :meth:`save` writes
    (one bias, a weight per slot, ledger columns of one length): a model
    that does not would load silently and score wrongly."""
    missing = [k for k in _ENTRIES if k not in arrays]
    if "meta" in missing:
        return  # reported by the caller as "not a mailsift model"
    if missing:
        raise ModelError(f"{path}: corrupt mailsift model (missing {', '.join(missing)})")
    for key, kinds in _ENTRIES.items():
        a = arrays[key]
        if a.ndim != 1 or a.dtype.kind not in kinds:
            raise ModelError(f"{path}: corrupt mailsift model ({key}: {a.dtype} array of shape {a.shape})")
    if arrays["bias"].shape != (1,):
        raise ModelError(f"{path}: corrupt mailsift model (bias has {arrays['bias'].size} entries, not 1)")
    if arrays["slots"].size != arrays["weights"].size:
        raise ModelError(f"{path}: corrupt mailsift model ({arrays['slots'].size} slots, "
                         f"{arrays['weights'].size} weights)")  # fmt: skip
    if "ledger_scale" in arrays:
        a = arrays["ledger_scale"]
        if a.ndim != 1 or a.dtype.kind != "f" or a.size != arrays["ledger_digest"].size:
            raise ModelError(
                f"{path}: corrupt mailsift model (ledger_scale: {a.dtype} array of shape {a.shape})"
            )
    if not arrays["ledger_digest"].size == arrays["ledger_label"].size == arrays["ledger_step"].size:
        raise ModelError(f"{path}: corrupt mailsift model (ledger columns of different lengths)")
    if arrays["slots"].size and int(arrays["slots"].min()) < 0:
        raise ModelError(f"{path}: corrupt mailsift model (negative weight index)")


def _file_mode(path: Path) -> int:
    """Keep the mode of the file being replaced; a new file gets 0666 less the
    umask (mkstemp's 0600 would hide the model from a filter running as
    another user)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


@contextmanager
def model_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s sidecar ``path.lock`` file while
    the model is read, changed and written back.

    Every writer of a model takes it: ``learn``/``unlearn`` and ``train`` in
    the CLI, and the one learner of ``mailsift serve``; two writers at once
    (IMAPSieve runs one ``learn`` per moved message) would each write their
    own copy and lose the other's update.  The lock is on a file of its own,
    never replaced: the model itself is replaced atomically on every save,
    so a lock on it would be a lock on a file that is gone.  flock() is
    released by the kernel when the process dies, so a killed writer never
    leaves the model locked.  Raises OSError when the lock file cannot be
    opened (FileNotFoundError: no such folder)."""
    path = Path(path)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
