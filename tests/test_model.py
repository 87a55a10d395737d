import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from mailsift.model import LinearModel, ModelError, TrainParams, fit_platt
from mailsift.parse import parse
from mailsift.tokens import FeatureSettings, extract
from mailsift.train import message_digest

SMALL = FeatureSettings(n_bits=16, ngram_bytes=2000)


def _vec(text: str, settings=SMALL):
    return extract(parse(f"Subject: s\n\n{text}\n".encode()), settings).vec


@pytest.fixture
def toy_model():
    spam = [_vec(f"cheap pills buy now offer {i} viagra casino winner") for i in range(30)]
    ham = [_vec(f"meeting notes for the kernel patch review number {i}") for i in range(30)]
    model = LinearModel(SMALL, TrainParams(epochs=3, shuffles=1)).fit(spam + ham, [True] * 30 + [False] * 30)
    model.platt = fit_platt(model.decision_function(spam + ham), np.array([True] * 30 + [False] * 30))
    return model


def test_fit_separates_and_predict_proba_is_two_columns(toy_model):
    p = toy_model.predict_proba([_vec("buy cheap pills now casino"), _vec("kernel patch review meeting")])
    assert p.shape == (2, 2)
    assert np.allclose(p.sum(axis=1), 1)
    assert p[0, 1] > 0.5 > p[1, 1]


def test_partial_fit_steps_at_online_lr_and_learn_one_at_lr():
    x = _vec("cheap pills buy now")
    online = [
        LinearModel(SMALL, TrainParams(lr=40.0, online_lr=r)).partial_fit([x], [True]) for r in (5.0, 10.0)
    ]
    assert np.count_nonzero(online[0].w) > 0
    assert np.allclose(online[1].w, 2 * online[0].w)  # from zero the step is proportional to its rate
    learned = LinearModel(SMALL, TrainParams(lr=40.0, online_lr=10.0))
    learned.learn_one(x, True, b"digest")
    assert np.allclose(learned.w, 4 * online[1].w)  # mailsift learn keeps fit's step


def test_save_load_round_trip_scores_identically(tmp_path, toy_model):
    path = tmp_path / "m.npz"
    toy_model.save(path)
    loaded = LinearModel.load(path)
    xs = [_vec("buy cheap pills"), _vec("patch review"), _vec("")]
    # weights are stored as float16: identical to within that precision
    assert np.allclose(loaded.decision_function(xs), toy_model.decision_function(xs), atol=1e-2)
    assert loaded.settings == toy_model.settings
    assert loaded.platt == toy_model.platt
    assert (loaded.n_ham, loaded.n_spam) == (30, 30)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, toy_model):
    path = tmp_path / "m.npz"
    toy_model.save(path)
    before = os.stat(path).st_ino
    toy_model.save(path)
    assert os.stat(path).st_ino != before  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a mailsift model file"),
        (b"garbage" * 100, "not a mailsift model file"),
        (None, "not a mailsift model"),  # a foreign npz
    ],
)
def test_corrupt_or_foreign_model_files_give_an_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content is None:
        np.savez(path, something=np.arange(3))
    else:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as err:
        LinearModel.load(path)
    assert str(path) in str(err.value)


def test_truncated_model_file_is_rejected(tmp_path, toy_model):
    path = tmp_path / "m.npz"
    toy_model.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=str(path)):
        LinearModel.load(path)


def test_model_with_a_newer_format_version_is_refused(tmp_path, toy_model):
    path = tmp_path / "m.npz"
    toy_model.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]))
    meta["format_version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ModelError, match="version 99 is not supported"):
        LinearModel.load(path)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_loading_a_pickle_bearing_file_never_executes_it(tmp_path, toy_model):
    path = tmp_path / "evil.npz"
    marker = tmp_path / "PWNED"
    # an npz whose arrays are pickled objects, and a plain pickle file
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with zf.open("meta.npy", "w") as fh:
            np.lib.format.write_array(fh, np.array([_Boom()], dtype=object), allow_pickle=True)
    path.write_bytes(buf.getvalue())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ModelError):
            LinearModel.load(path)
        (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Boom()))
        with pytest.raises(ModelError):
            LinearModel.load(tmp_path / "evil.pkl")
    finally:
        os.chdir(cwd)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b'{"weights": [1, 2, 3]}\n', pickle.dumps({"bias": [0.0]}), b"\x93NUMPY garbage"],
    ids=["random-bytes", "json", "pickle", "npy-magic"],
)
def test_a_file_that_is_no_model_never_invites_unpickling(tmp_path, content):
    # numpy's own error for these says "If you trust the file you can load it
    # unsafely using allow_pickle=": an admin must never be told that
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a mailsift model file") as err:
        LinearModel.load(path)
    text = str(err.value)
    assert str(path) in text
    assert "pickle" not in text.lower() and "trust" not in text.lower()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(bias=np.zeros(3)), "bias has 3 entries"),
        (lambda a: a.update(weights=a["weights"][:-1]), "slots"),
        (lambda a: a.update(ledger_label=np.zeros(2, np.int8)), "ledger"),
        (lambda a: a.update(slots=a["slots"].reshape(1, -1)), "slots"),
        (lambda a: a.pop("weights"), "missing weights"),
    ],
    ids=["bias-3", "weights-short", "ledger-ragged", "slots-2d", "no-weights"],
)
def test_a_model_with_misshapen_arrays_is_refused(tmp_path, toy_model, change, message):
    path = tmp_path / "m.npz"
    toy_model.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(path, **arrays)
    with pytest.raises(ModelError, match=message):
        LinearModel.load(path)


def test_missing_model_file_says_not_found(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        LinearModel.load(tmp_path / "none.npz")


def test_learn_then_unlearn_restores_the_weights_exactly(toy_model):
    raw = b"Subject: odd\n\nan unusual message about gardening and tomatoes\n"
    vec = extract(parse(raw), SMALL).vec
    digest = message_digest(raw)
    w0, b0 = toy_model.w.copy(), toy_model.b
    assert toy_model.learn_one(vec, True, digest)[0] == "learned"
    assert not np.array_equal(toy_model.w, w0)
    assert toy_model.learn_one(vec, True, digest)[0] == "already-learned"
    assert toy_model.unlearn_one(vec, digest) == ("unlearned", 1)
    assert np.allclose(toy_model.w, w0, atol=1e-6) and abs(toy_model.b - b0) < 1e-9
    assert toy_model.unlearn_one(vec, digest)[0] == "not-learned"


def test_relearning_with_the_other_label_replaces_the_first_step(toy_model):
    raw = b"Subject: odd\n\nanother unusual message\n"
    vec = extract(parse(raw), SMALL).vec
    digest = message_digest(raw)
    toy_model.learn_one(vec, True, digest)
    assert toy_model.learn_one(vec, False, digest)[0] == "relabelled"
    assert toy_model.ledger.digests[digest][0] == 0


def test_partial_fit_moves_the_margin_towards_the_label(toy_model):
    x = _vec("tomatoes gardening compost seedlings")
    before = toy_model.margin(x)
    toy_model.partial_fit([x], [True])
    assert toy_model.margin(x) > before


def test_platt_calibration_is_monotone_and_finite_on_separable_data():
    m = np.array([-3.0, -2, -1, 1, 2, 3])
    a, c = fit_platt(m, np.array([0, 0, 0, 1, 1, 1], dtype=bool))
    assert a > 0 and np.isfinite(c)
    p = 1 / (1 + np.exp(-(a * m + c)))
    assert np.all(np.diff(p) > 0) and p.max() < 1


def test_feature_hashing_is_the_same_in_every_process():
    code = (
        "from mailsift.parse import parse; from mailsift.tokens import extract, FeatureSettings;"
        "print(extract(parse(b'Subject: hi\\n\\nsame words every time'), FeatureSettings()).indices.tolist())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1
