import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from mailsift.evaluate import lam, metrics, one_minus_auc, spam_caught_at_fpr


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(-5, 5)), min_size=2, max_size=200).filter(
        lambda xs: any(y for y, _ in xs) and not all(y for y, _ in xs)
    )
)
def test_one_minus_auc_matches_scikit_learn_including_ties(pairs):
    labels = np.array([y for y, _ in pairs])
    scores = np.array([float(s) for _, s in pairs])  # small integer range: many ties
    assert math.isclose(one_minus_auc(labels, scores), 1 - roc_auc_score(labels, scores), abs_tol=1e-12)


def test_all_ties_count_half():
    assert one_minus_auc(np.array([0, 1, 0, 1], bool), np.zeros(4)) == 0.5


def test_spam_caught_at_fpr_uses_the_ham_threshold():
    ham = np.arange(1000, dtype=float)  # 0..999
    spam = np.array([998.5, 999.5, 1000.0, 500.0])
    labels = np.array([False] * 1000 + [True] * 4)
    scores = np.concatenate([ham, spam])
    # 0.1% of 1000 ham = 1 ham may score above the threshold, so the threshold
    # is the second-highest ham (998) and spam must score above it
    assert spam_caught_at_fpr(labels, scores, 0.001) == 0.75
    # 0.01%: no ham above: threshold is the top ham (999)
    assert spam_caught_at_fpr(labels, scores, 0.0001) == 0.5


def test_lam_is_the_logistic_average():
    assert math.isclose(lam(0.01, 0.01), 0.01)
    assert math.isclose(lam(0.5, 0.5), 0.5)


def test_metrics_reports_every_key_of_the_json_contract():
    labels = np.array([False, False, True, True])
    m = metrics(labels, np.array([0.0, 6.0, 4.0, 9.0]), threshold=5.0, seconds=2.0)
    for key in (
        "n_ham",
        "n_spam",
        "one_minus_auc_pct",
        "lam_pct",
        "spam_caught_pct_at_fpr_0_1",
        "spam_caught_pct_at_fpr_0_01",
        "fpr_pct",
        "fnr_pct",
        "msgs_per_s",
    ):
        assert key in m
    assert m["fpr_pct"] == 50.0 and m["fnr_pct"] == 50.0
    assert m["msgs_per_s"] == 2.0
    assert math.isclose(m["one_minus_auc_pct"], 25.0)
