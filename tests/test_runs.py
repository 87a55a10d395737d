"""Run folders: the file format mailsift and the peer scripts share, and the
report computed from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mailsift.runs import Run, RunError, learning_curve, read_run, run_metrics, write_report, write_run


def _run(name="a", scores=(0.1, 0.9, 0.4, 0.8), labels=(False, True, False, True), online=False) -> Run:
    return Run(
        name=name,
        labels=np.array(labels, dtype=bool),
        scores=np.array(scores, dtype=float),
        paths=[f"/corpus/m{i}" for i in range(len(scores))],
        threshold=0.5,
        score_seconds=2.0,
        train_seconds=1.0,
        n_train=10,
        online=online,
        notes="test run",
    )


def test_run_round_trips_through_its_folder_exactly(tmp_path):
    run = _run(scores=(1e-17, 0.3333333333333333, -2.5, 7.0))
    back = read_run(write_run(run, tmp_path / "r"))
    assert back.name == "a" and back.paths == run.paths and back.notes == "test run"
    assert np.array_equal(back.scores, run.scores) and np.array_equal(back.labels, run.labels)
    m = run_metrics(back)
    assert m["msgs_per_s"] == 2.0 and m["train_msgs_per_s"] == 10.0


@pytest.mark.parametrize(
    "content, message",
    [
        ("path\tlabel\tscore\n/x\tmaybe\t1\n", "ham|spam"),
        ("path\tlabel\tscore\n/x\tspam\tlots\n", "not a number"),
        ("path\tlabel\tscore\n/x\tspam\tnan\n", "not finite"),
        ("path\tlabel\tscore\n/x\tspam\t-inf\n", "not finite"),
        ("label score path\n", "header"),
    ],
)
def test_a_malformed_score_file_is_refused_with_its_line(tmp_path, content, message):
    folder = write_run(_run(), tmp_path / "r")
    (folder / "scores.tsv").write_text(content)
    with pytest.raises(RunError, match=message):
        read_run(folder)


def test_a_folder_without_run_json_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="not a run folder"):
        read_run(tmp_path)


def test_report_refuses_runs_that_label_a_message_differently(tmp_path):
    with pytest.raises(RunError, match="labels some messages differently"):
        write_report([_run(), _run("b", labels=(True, True, False, True))], tmp_path)


def test_learning_curve_is_the_cumulative_error_rate():
    run = _run(scores=(0.9, 0.9, 0.1, 0.1), labels=(False, True, False, True), online=True)
    seen, err = learning_curve(run)  # wrong, right, right, wrong
    assert seen.tolist() == [1, 2, 3, 4]
    assert np.allclose(err, [100, 50, 100 / 3, 50])


def test_report_for_two_runs_has_both_rows_and_one_roc(tmp_path):
    doc = write_report([_run(), _run("b", scores=(0.5, 0.4, 0.3, 0.9))], tmp_path, title="t")
    assert [r["name"] for r in doc["runs"]] == ["a", "b"]
    assert doc["runs"][0]["metrics"]["one_minus_auc_pct"] == 0.0
    assert doc["runs"][1]["metrics"]["one_minus_auc_pct"] == 25.0
    roc = doc["runs"][1]["roc"]  # the curve's points, from (0, 0) to (1, 1)
    assert roc["fpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    fpr, tpr = np.array(roc["fpr"]), np.array(roc["tpr"])
    assert np.isclose(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2), 0.75)  # area under the points
    assert json.loads((tmp_path / "report.json").read_text()) == doc
    md = (tmp_path / "report.md").read_text()
    assert "| a | 0.0000 |" in md and "| b | 25.0000 |" in md and "test run" in md
    assert (tmp_path / "roc.png").stat().st_size > 10_000


def test_a_one_class_test_set_reports_null_figures_and_no_curve(tmp_path):
    run = _run(scores=(0.9, 0.8), labels=(True, True))
    doc = write_report([run], tmp_path)
    assert doc["runs"][0]["metrics"]["one_minus_auc_pct"] is None
    assert doc["runs"][0]["roc"] == {"fpr": [], "tpr": []}
    assert "NaN" not in (tmp_path / "report.json").read_text()  # strict JSON
    assert (tmp_path / "roc.png").exists()
