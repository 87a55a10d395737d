"""A scored run on disk, and the report over one or several runs.

A run is a folder holding ``scores.tsv`` (``path, label, score`` per test
message) and ``run.json`` (who scored, how fast, its own threshold).  mailsift's
``eval --out`` writes one; so does every script in ``benchmarks/peers``.  The
report is computed from the score files alone, so mailsift and a peer filter
are judged by the same code on the same messages, and anyone can recompute a
figure from the files.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evaluate import metrics

SCORES_FILE = "scores.tsv"
RUN_FILE = "run.json"


class RunError(Exception):
    """A run folder that cannot be read or compared; the message says which."""


@dataclass
class Run:
    """One filter's scores on one labelled test set.

    ``threshold`` is the filter's own spam threshold on its own score scale
    (for FPR/FNR at the operating point); the ranking metrics need none.
    Throughput is whole-pipeline seconds as the filter was run, which the
    run's ``notes`` qualify (process per message, a daemon, in-process)."""

    name: str
    labels: np.ndarray
    scores: np.ndarray
    paths: list[str]
    threshold: float
    score_seconds: float | None = None
    train_seconds: float | None = None
    n_train: int | None = None
    online: bool = False
    version: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)


def write_run(run: Run, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / SCORES_FILE, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["path", "label", "score"])
        for path, spam, score in zip(run.paths, run.labels, run.scores):
            w.writerow([path, "spam" if spam else "ham", repr(float(score))])
    meta = {
        "name": run.name,
        "threshold": run.threshold,
        "score_seconds": run.score_seconds,
        "train_seconds": run.train_seconds,
        "n_train": run.n_train,
        "online": run.online,
        "version": run.version,
        "notes": run.notes,
        **({"extra": run.extra} if run.extra else {}),
    }
    (folder / RUN_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return folder


def read_run(folder: str | os.PathLike) -> Run:
    folder = Path(folder)
    try:
        meta = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{folder}: not a run folder (no {RUN_FILE})") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{folder / RUN_FILE}: unreadable ({exc})") from None
    paths, labels, scores = [], [], []
    try:
        with open(folder / SCORES_FILE, encoding="utf-8", newline="") as fh:
            rows = csv.reader(fh, delimiter="\t")
            header = next(rows, None)
            if header != ["path", "label", "score"]:
                raise RunError(f"{folder / SCORES_FILE}: header must be 'path<TAB>label<TAB>score'")
            for lineno, row in enumerate(rows, 2):
                if len(row) != 3 or row[1] not in ("ham", "spam"):
                    raise RunError(f"{folder / SCORES_FILE}:{lineno}: expected 'path<TAB>ham|spam<TAB>score'")
                try:
                    score = float(row[2])
                except ValueError:
                    raise RunError(
                        f"{folder / SCORES_FILE}:{lineno}: score {row[2]!r} is not a number"
                    ) from None
                if not math.isfinite(score):
                    raise RunError(f"{folder / SCORES_FILE}:{lineno}: score {row[2]!r} is not finite")
                paths.append(row[0])
                labels.append(row[1] == "spam")
                scores.append(score)
    except FileNotFoundError:
        raise RunError(f"{folder}: no {SCORES_FILE}") from None
    return Run(
        name=str(meta.get("name") or folder.name),
        labels=np.array(labels, dtype=bool),
        scores=np.array(scores, dtype=np.float64),
        paths=paths,
        threshold=float(meta.get("threshold", 0.0)),
        score_seconds=meta.get("score_seconds"),
        train_seconds=meta.get("train_seconds"),
        n_train=meta.get("n_train"),
        online=bool(meta.get("online", False)),
        version=str(meta.get("version", "")),
        notes=str(meta.get("notes", "")),
        extra=meta.get("extra", {}),
    )


def run_metrics(run: Run) -> dict:
    """The core metrics plus both throughputs; msgs/s are per test (scoring)
    and per training message, so a filter's training is not hidden in its
    scoring speed."""
    m = metrics(run.labels, run.scores, run.threshold, run.score_seconds)
    if run.train_seconds and run.n_train:
        m["train_seconds"] = run.train_seconds
        m["train_msgs_per_s"] = run.n_train / run.train_seconds
    return m


def check_comparable(runs: list[Run]) -> None:
    """Runs compared on one table must have scored the same messages with the
    same labels; otherwise the table would compare different tests."""
    if not runs:
        raise RunError("no runs to report")
    first = runs[0]
    ref = dict(zip(first.paths, first.labels))
    for run in runs[1:]:
        other = dict(zip(run.paths, run.labels))
        if other.keys() != ref.keys():
            missing = len(ref.keys() - other.keys())
            extra = len(other.keys() - ref.keys())
            raise RunError(
                f"{run.name} scored different messages from {first.name} "
                f"({missing} missing, {extra} extra); compare runs on the same index"
            )
        if any(ref[p] != lab for p, lab in other.items()):
            raise RunError(f"{run.name} labels some messages differently from {first.name}")


def learning_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error rate (% of messages so far misclassified at the
    filter's threshold) against messages seen, in scoring order."""
    wrong = (run.scores >= run.threshold) != run.labels
    seen = np.arange(1, len(wrong) + 1)
    return seen, 100 * np.cumsum(wrong) / seen


def _fmt(x, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_table(names: list[str], rows: list[dict]) -> str:
    """The comparison table the README quotes; one row per run."""
    head = (
        "| filter | (1-AUC)% | spam caught at 0.1% FPR | at 0.01% FPR | lam% | FPR% / FNR% at its threshold "
        "| scoring msgs/s | training msgs/s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for name, m in zip(names, rows):
        lines.append(
            f"| {name} | {_fmt(m['one_minus_auc_pct'], '.4f')} "
            f"| {_fmt(m['spam_caught_pct_at_fpr_0_1'], '.2f')}% "
            f"| {_fmt(m['spam_caught_pct_at_fpr_0_01'], '.2f')}% | {_fmt(m['lam_pct'], '.3f')} "
            f"| {_fmt(m['fpr_pct'], '.3f')} / {_fmt(m['fnr_pct'], '.3f')} "
            f"| {_fmt(m.get('msgs_per_s'), ',.0f')} | {_fmt(m.get('train_msgs_per_s'), ',.0f')} |"
        )
    return head + "\n".join(lines) + "\n"


def json_safe(value):
    """JSON has no NaN: a figure that does not exist (AUC of a one-class
    test set) is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_report(runs: list[Run], out: str | os.PathLike, title: str = "mailsift evaluation") -> dict:
    """report.json, report.md and the figures for one run or a comparison.

    Returns the JSON document (metrics and the ROC's points per run).
    Figures: roc.png (every run, log FPR axis), hist.png (score histogram
    per class, a panel per run) and, when a run was online, learning.png."""
    from . import plots

    plots.require_matplotlib()  # before anything is written: a report without its figures is half a report
    check_comparable(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_metrics(r) for r in runs]
    rocs = [plots.roc_points(r.labels, r.scores) for r in runs]
    figures = {"roc": "roc.png", "histograms": "hist.png"}
    plots.roc_figure(runs, out / figures["roc"])
    plots.histogram_figure(runs, out / figures["histograms"])
    online = any(r.online for r in runs)
    if online:
        figures["learning_curve"] = "learning.png"
        plots.learning_figure([r for r in runs if r.online], out / figures["learning_curve"])
    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = {
        "title": title,
        "created": created,
        "runs": [
            {
                "name": r.name,
                "version": r.version,
                "online": r.online,
                "notes": r.notes,
                "metrics": m,
                "roc": {"fpr": fpr.round(8).tolist(), "tpr": tpr.round(8).tolist()},
            }
            for r, m, (fpr, tpr) in zip(runs, rows, rocs)
        ],
        "figures": figures,
    }
    doc = json_safe(doc)
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    md = [f"# {title}", "", f"{created}; {rows[0]['n_ham']} ham and {rows[0]['n_spam']} spam scored.", ""]
    md.append(markdown_table([r.name for r in runs], rows))
    md.append(
        "(1-AUC)% and spam caught at a fixed FPR rank every message by the filter's own score, so "
        "they need no threshold; FPR/FNR use each filter's own default threshold."
        + (
            " Online runs score each message and then learn it: their msgs/s is both together."
            if online
            else ""
        )
        + "\n"
    )
    notes = [(r.name, r.notes) for r in runs if r.notes]
    if notes:
        md.append("## How each filter was run\n")
        md += [f"- **{name}**: {text}" for name, text in notes]
        md.append("")
    md.append("## Figures\n")
    md += [f"![{key}]({name})" for key, name in figures.items()]
    rules = [(r.name, r.extra.get("rules")) for r in runs if r.extra.get("rules")]
    for name, table in rules:
        md += ["", f"## Rule hits ({name})", "", "| rule | ham % | spam % |", "|---|---:|---:|"]
        md += [f"| {rule} | {v['ham_pct']:.2f} | {v['spam_pct']:.2f} |" for rule, v in table.items()]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return doc
