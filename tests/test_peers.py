"""benchmarks/peers/run.py end to end on a small split: every peer is
installed (CI's .ci/run installs them from Debian), trained, and scores the
same test messages, and the comparison report puts all five on one table.
The accuracy figures themselves are measured on the full split
(benchmarks/peers/README.md); with 150 messages per class some peers'
Bayes does not switch on yet, so only the mechanics are pinned here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailsift.runs import read_run

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py"
PROGRAMS = ("sa-learn", "bogofilter", "crm", "rspamd", "redis-server")

pytestmark = pytest.mark.skipif(
    any(shutil.which(p) is None for p in PROGRAMS) and not os.environ.get("CI"),
    reason="needs Debian's spamassassin, bogofilter, crm114, rspamd and redis-server (.ci/run installs them)",
)


def test_peers_script_scores_the_same_messages_with_all_five_filters(small_indexes, tmp_path):
    train, test = small_indexes
    out = tmp_path / "report"
    r = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--train",
            str(train),
            "--test",
            str(test),
            "--out",
            str(out),
            "--no-install",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    names = [run["name"] for run in report["runs"]]
    assert names == ["mailsift", "SpamAssassin", "Bogofilter", "CRM114", "Rspamd"]
    for row in names:
        assert f"| {row} |" in r.stdout
    tested = {line.split()[1] for line in Path(test).read_text().splitlines()}
    for folder in ("mailsift", "spamassassin", "bogofilter", "crm114", "rspamd"):
        run = read_run(out / folder)
        assert len(run.scores) == 200 and {Path(p).name for p in run.paths} == {Path(p).name for p in tested}
        assert run.score_seconds > 0 and run.train_seconds > 0 and run.notes
        # each filter tells spam from ham better than chance even on this small set
        assert run.scores[run.labels].mean() > run.scores[~run.labels].mean(), folder
    assert (out / "roc.png").stat().st_size > 20_000


def test_peers_script_online_scores_every_message_in_the_same_order(small_indexes, tmp_path):
    _, test = small_indexes
    out = tmp_path / "online"
    r = subprocess.run(
        [sys.executable, str(RUN), "--online", str(test), "--out", str(out), "--no-install"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    order = read_run(out / "mailsift").paths
    assert sorted(order) != order  # shuffled (the default order), not the index's
    for folder in ("spamassassin", "bogofilter", "crm114", "rspamd"):
        run = read_run(out / folder)
        assert run.online and run.paths == order  # every filter met the mail in the same order
        assert run.train_seconds is None and run.score_seconds > 0
    assert (out / "learning.png").stat().st_size > 20_000
