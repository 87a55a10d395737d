"""Accuracy on real corpora, through the same code paths a user runs.

The bounds are the levels measured when they were written (see
models/default/README.md), less a small allowance for noise, so a change
that makes mailsift worse fails here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mailsift import Filter
from mailsift.cli import main
from mailsift.config import Config
from mailsift.corpus import read_index
from mailsift.filter import DEFAULT_MODEL
from mailsift.model import LinearModel
from mailsift.tokens import extract_bytes


def _eval_json(capsys, *args) -> dict:
    assert main(["eval", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dev_split_train_then_test(sa_dir, capsys):
    """The 2002 split with the learner chosen on trec07p-dev/train.index
    (issue 9).  Measured at commit 745b10a (3 passes): (1-AUC)% 0.0496,
    91.46% caught at 0.1% FPR, FPR 0.19% / FNR 6.1% at the threshold; with
    6 passes (commit ab226e8) 0.0496, 90.61%, FPR 0.24% / FNR 6.1%; with the
    step's erosion limit (commit 0fbb000) 90.40% caught; these bounds keep
    that level (the older, tighter bar is the xfail below).
    --keep-duplicates: measured before eval de-duplicated (48 test messages
    are also in train)."""
    m = _eval_json(
        capsys, "--train", sa_dir / "train.index", "--test", sa_dir / "test.index", "--keep-duplicates"
    )
    assert (m["n_ham"], m["n_spam"]) == (2075, 948)
    assert m["one_minus_auc_pct"] < 0.055
    assert m["spam_caught_pct_at_fpr_0_1"] >= 90.0
    assert m["fpr_pct"] <= 0.3
    assert m["fnr_pct"] <= 7.0


@pytest.mark.xfail(
    strict=True,
    reason="unmet since issue 9: the old bar came from settings tuned on this split's test half; "
    "the trec07p-chosen raw-byte learner measures 0.0498 / 90.40% here at 0fbb000 "
    "(the TREC reference 0.0442 / 91.67%)",
)
def test_dev_split_meets_the_2002_bar(sa_dir, capsys):
    m = _eval_json(capsys, "--train", sa_dir / "train.index", "--test", sa_dir / "test.index")
    assert m["one_minus_auc_pct"] < 0.0139
    assert m["spam_caught_pct_at_fpr_0_1"] >= 98.5


def _ham_fpr_pct(flt, ham_raws) -> float:
    return 100 * float(np.mean([flt.score(raw, evidence=0).is_spam for raw in ham_raws]))


@pytest.fixture(scope="module")
def small_model_and_clicks(tmp_path_factory, sa_dir):
    """A model trained on 300 ham + 150 spam of the 2002 training split, and
    the five spam of the rest of that split it scores lowest: the mail a user
    would click "junk" on."""
    train = read_index(sa_dir / "train.index")
    ham = [i for i in train if not i.spam][:300]
    spam = [i for i in train if i.spam]
    folder = tmp_path_factory.mktemp("clicks")
    index = folder / "small.index"
    index.write_text("".join(f"{'spam' if i.spam else 'ham'} {i.path.resolve()}\n" for i in ham + spam[:150]))
    model_path = folder / "model.npz"
    assert main(["train", "--index", str(index), "--model", str(model_path)]) == 0
    model = LinearModel.load(model_path)
    rest = [i.read() for i in spam[150:]]
    margins = [model.margin(extract_bytes(raw, model.settings).vec) for raw in rest]
    clicks = []
    for k, j in enumerate(np.argsort(margins)[:5]):
        path = folder / f"click{k}.eml"
        path.write_bytes(rest[j])
        clicks.append(path)
    return model_path, clicks


def test_five_learn_spam_clicks_never_raise_ham_fpr_by_a_quarter_point(
    small_model_and_clicks, sa_dir, capsys
):
    """The issue 9 bar.  Met by the step's ``max_erosion`` (0.5, chosen on
    the train split: benchmarks/click_safety.py); without it the clicks rose
    the FPR by up to +0.48 points."""
    model_path, clicks = small_model_and_clicks
    config = Config()
    config.dnsbl = []
    config.auth.enabled = False
    ham = [i.read() for i in read_index(sa_dir / "test.index") if not i.spam]
    assert len(ham) == 2075
    before = _ham_fpr_pct(Filter(config, model_path=str(model_path)), ham)
    for click in clicks:
        assert main(["learn", "--spam", str(click), "--model", str(model_path)]) == 0
        after = _ham_fpr_pct(Filter(config, model_path=str(model_path)), ham)
        assert after - before <= 0.25, (click.name, before, after)
        before = after


def test_online_immediate_feedback_over_the_whole_corpus(sa_dir, capsys):
    m = _eval_json(capsys, "--online", sa_dir / "all.index")
    assert (m["n_ham"], m["n_spam"]) == (4150, 1896)
    assert m["one_minus_auc_pct"] < 0.1
    assert m["fpr_pct"] < 0.5


def test_shipped_default_model_is_safe_on_modern_mail(modern_dir):
    """2019-2026 list mail the default model never saw: at most 1% of ham may
    be flagged at the default threshold while most spam is caught."""
    flt = Filter(Config(), model_path=str(DEFAULT_MODEL))
    assert flt.is_generic
    items = read_index(modern_dir / "all.index")
    flagged = np.array([flt.score(it.read(), evidence=0).is_spam for it in items])
    spam = np.array([it.spam for it in items])
    ham_flagged_pct = 100 * flagged[~spam].mean()
    spam_caught_pct = 100 * flagged[spam].mean()
    assert ham_flagged_pct <= 1.0, ham_flagged_pct  # measured 0.04%
    assert spam_caught_pct >= 55.0, spam_caught_pct  # measured 60.9%


def test_shipped_default_model_separates_the_dev_test_split(sa_dir, capsys):
    """The default was trained on all of the development corpus, so this is
    not a fair accuracy figure; it checks the shipped file is the model its
    card describes and loads through the normal path."""
    m = _eval_json(capsys, "--test", sa_dir / "test.index", "--model", DEFAULT_MODEL)
    assert m["one_minus_auc_pct"] < 0.05
    assert m["fpr_pct"] < 0.5
