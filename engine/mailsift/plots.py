"""The evaluation figures (matplotlib, PNG).

matplotlib is an optional extra (``pip install 'mailsift[plots]'``): a mail
server running only the filter does not need it, so it is imported only
when a figure is drawn, never when mailsift is imported.

Figures are built on ``matplotlib.figure.Figure`` directly, not pyplot, so
the library never touches a global backend or leaks open figures; each
function returns the figure (a notebook displays it) and saves it when given
a path.  The ROC uses a log FPR axis because the region that matters to a
mail admin is below 1% of ham lost.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .runs import Run


#: how to get the figures on a lean (daemon-only) install
INSTALL_HINT = "pip install 'mailsift[plots]'"


class PlotsUnavailable(ImportError):
    """matplotlib is not installed: it is an optional extra (``plots``)."""


def require_matplotlib() -> None:
    """Raise PlotsUnavailable, saying how to install it, if matplotlib is
    missing.  Called before work whose end product is figures, so that
    ``eval --out`` fails at once rather than after scoring a corpus."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PlotsUnavailable(
            f"the figures need matplotlib, which is not installed (an optional extra): {INSTALL_HINT}"
        ) from exc


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        fig.savefig(path, format="png")
    return fig


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, starting at (0, 0); empty
    when the messages are all of one class (there is no curve)."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return np.array([]), np.array([])
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64))
    return fpr, tpr


def roc_figure(runs: list[Run], path: str | os.PathLike | None = None) -> Figure:
    """Spam caught against ham misfiled, one curve per run.  FPR 0 cannot sit
    on a log axis, so it is drawn at half a message (1 / 2n_ham), marked."""
    from .evaluate import one_minus_auc

    fig = _figure(7, 5)
    ax = fig.add_subplot()
    n_ham = max(int((~r.labels).sum()) for r in runs)
    floor = 0.5 / max(n_ham, 1)
    lowest = 100.0  # the y axis starts below the worst curve's catch at 0.1% FPR
    for run in runs:
        fpr, tpr = roc_points(run.labels, run.scores)
        if not len(fpr):
            ax.plot([], [], label=f"{run.name}: no curve (only one class scored)")
            continue
        lowest = min(lowest, 100 * float(tpr[np.searchsorted(fpr, 0.001, side="right") - 1]))
        auc = 100 * one_minus_auc(run.labels, run.scores)
        ax.step(np.maximum(fpr, floor), 100 * tpr, where="post", label=f"{run.name}  (1-AUC)% {auc:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(floor * 0.9, 1.0)
    if floor < 0.001:  # the operating point the README quotes, when the test set can show it
        ax.axvline(0.001, color="grey", lw=0.8, ls=":")
        ax.text(0.001, 0.02, " 0.1% FPR", color="grey", fontsize=8, transform=ax.get_xaxis_transform())
    ax.axvline(floor, color="lightgrey", lw=0.8)
    ax.set_xlabel(f"ham wrongly flagged (FPR, log scale; FPR 0 drawn at {floor:.1e})")
    ax.set_ylabel("spam caught (%)")
    ax.set_ylim(max(0.0, 10 * np.floor(lowest / 10) - 10), 100.5)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("ROC")
    return _save(fig, path)


def histogram_figure(runs: list[Run], path: str | os.PathLike | None = None) -> Figure:
    """Score distribution per class, one panel per run (each on its own
    scale), with the run's threshold; the overlap is where mistakes live."""
    fig = _figure(7, 2.4 * len(runs))
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, run in zip(axes, runs):
        lo, hi = np.percentile(run.scores, [0.5, 99.5]) if len(run.scores) else (0, 1)
        if hi <= lo:
            lo, hi = lo - 1, hi + 1
        bins = np.linspace(lo, hi, 60)
        clipped = np.clip(run.scores, lo, hi)
        ax.hist(clipped[~run.labels], bins=bins, alpha=0.6, label="ham", color="tab:blue")
        ax.hist(clipped[run.labels], bins=bins, alpha=0.6, label="spam", color="tab:red")
        ax.axvline(run.threshold, color="black", lw=0.8, ls="--", label="threshold")
        ax.set_yscale("log")
        ax.set_ylabel("messages")
        ax.set_title(f"{run.name}: score per class", fontsize=9)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("score (each filter's own scale; outer 0.5% clipped to the edges)")
    return _save(fig, path)


def learning_figure(runs: list[Run], path: str | os.PathLike | None = None) -> Figure:
    """Cumulative error rate against messages seen (online runs)."""
    from .runs import learning_curve

    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for run in runs:
        seen, err = learning_curve(run)
        ax.plot(seen, err, label=run.name)
    ax.set_yscale("log")
    ax.set_xlabel("messages seen")
    ax.set_ylabel("cumulative error rate (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Online learning curve (score, then learn each message)")
    return _save(fig, path)
