import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import replace

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
    model = LinearModel(SMALL, TrainParams(epochs=3)).fit(spam + ham, [True] * 30 + [False] * 30)
    model.platt = fit_platt(model.decision_function(spam + ham), np.array([True] * 30 + [False] * 30))
    return model


def test_fit_separates_and_predict_proba_is_two_columns(toy_model):
    p = toy_model.predict_proba([_vec("buy cheap pills now casino"), _vec("kernel patch review meeting")])
    assert p.shape == (2, 2)
    assert np.allclose(p.sum(axis=1), 1)
    assert p[0, 1] > 0.5 > p[1, 1]


def _stream(n=40):
    texts = [f"cheap pills offer {i} casino" if i % 3 else f"kernel patch review {i} notes" for i in range(n)]
    return [_vec(t) for t in texts], [i % 3 != 0 for i in range(n)]


def test_learn_one_partial_fit_and_online_eval_take_the_same_step(tmp_path):
    """What eval --online measures is what a click does: the same weights
    after the same messages, whichever entry point taught them."""
    X, y = _stream()
    online = LinearModel(SMALL).partial_fit(X, y)
    clicked = LinearModel(SMALL)
    for i, (x, spam) in enumerate(zip(X, y)):
        clicked.learn_one(x, spam, f"d{i}".encode().ljust(16, b"\0"))
    stepped = LinearModel(SMALL)
    for x, spam in zip(X, y):
        stepped.step(x, spam)
    assert np.count_nonzero(online.w) > 0
    assert np.array_equal(online.w, clicked.w) and np.array_equal(online.acc, clicked.acc)
    assert np.array_equal(online.w, stepped.w)
    assert (clicked.n_spam, clicked.n_ham) == (online.n_spam, online.n_ham) == (sum(y), len(y) - sum(y))


def test_online_eval_runs_the_models_step(tmp_path, message_bytes):
    """score_online's learning is LinearModel.step: the same weights as
    partial_fit on the same messages."""
    from mailsift import Filter
    from mailsift.config import Config
    from mailsift.corpus import read_index
    from mailsift.evaluate import score_online
    from mailsift.tokens import extract_bytes

    lines = []
    raws = []
    for i in range(12):
        spam = i % 2 == 0
        raw = message_bytes(body=("win cash now casino " if spam else "minutes of the meeting ") + str(i))
        (tmp_path / f"m{i}").write_bytes(raw)
        raws.append((raw, spam))
        lines.append(f"{'spam' if spam else 'ham'} m{i}\n")
    (tmp_path / "all.index").write_text("".join(lines))
    config = Config()
    config.dnsbl = []
    config.auth.enabled = False
    flt = Filter(config, model=LinearModel(SMALL))
    score_online(flt, read_index(tmp_path / "all.index"))
    reference = LinearModel(SMALL).partial_fit(
        [extract_bytes(r, SMALL).vec for r, _ in raws], [s for _, s in raws]
    )
    assert np.array_equal(flt.model.w, reference.w)


def test_adagrad_steps_shrink_for_features_seen_often():
    x = _vec("cheap pills buy now")
    model = LinearModel(SMALL)
    moves = []
    for _ in range(3):
        before = model.margin(x)
        model.step(x, True, margin=0.0)  # same gradient each time: only the AdaGrad sums differ
        moves.append(model.margin(x) - before)
    assert moves[0] > moves[1] > moves[2] > 0


def test_save_load_round_trip_scores_identically(tmp_path, toy_model):
    path = tmp_path / "m.npz"
    toy_model.save(path)
    loaded = LinearModel.load(path)
    xs = [_vec("buy cheap pills"), _vec("patch review"), _vec("")]
    # weights and AdaGrad sums are stored as float32: exactly what was in memory
    assert np.array_equal(loaded.decision_function(xs), toy_model.decision_function(xs))
    assert np.array_equal(loaded.w, toy_model.w) and np.array_equal(loaded.acc, toy_model.acc)
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


def test_damaged_compressed_data_in_a_model_file_is_a_model_error(tmp_path, toy_model):
    """Bytes flipped inside a member's deflate stream (a bad disk block or
    copy) raised zlib.error past every handler: a traceback and exit 1."""
    import zipfile

    path = tmp_path / "m.npz"
    toy_model.save(path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        big = max(z.infolist(), key=lambda i: i.compress_size)
    assert big.compress_type == zipfile.ZIP_DEFLATED and big.compress_size > 256
    start = big.header_offset + 30 + len(big.filename.encode()) + len(big.extra)
    middle = start + big.compress_size // 2
    data[middle : middle + 64] = bytes(b ^ 0xA5 for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
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
        (lambda a: a.update(ledger_scale=np.ones(5)), "ledger_scale"),
    ],
    ids=["bias-3", "weights-short", "ledger-ragged", "slots-2d", "no-weights", "scales-ragged"],
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


def test_learn_then_unlearn_gives_every_probability_back(toy_model, tmp_path):
    raw = b"Subject: odd\n\nan unusual message about gardening and tomatoes\n"
    vec = extract(parse(raw), SMALL).vec
    digest = message_digest(raw)
    probes = [
        _vec(t) for t in ("buy cheap pills", "patch review", "tomatoes gardening", "an unusual message")
    ]
    p0 = toy_model.predict_proba(probes)[:, 1]
    w0 = toy_model.w.copy()
    assert toy_model.learn_one(vec, True, digest)[0] == "learned"
    assert not np.array_equal(toy_model.w, w0)
    assert toy_model.learn_one(vec, True, digest)[0] == "already-learned"
    # through a save and load, as two mailsift learn / unlearn runs do
    toy_model.save(tmp_path / "m.npz")
    loaded = LinearModel.load(tmp_path / "m.npz")
    assert loaded.unlearn_one(vec, digest) == ("unlearned", 1)
    assert np.abs(loaded.predict_proba(probes)[:, 1] - p0).max() < 1e-4
    assert np.allclose(loaded.w, w0, atol=1e-6)
    assert loaded.unlearn_one(vec, digest)[0] == "not-learned"


def test_format_1_model_files_still_load_and_score(tmp_path):
    """A model written by mailsift before format 2 (float16 weights, v1
    features, a bias) loads and scores with its own feature extraction."""
    from mailsift.tokens import FeatureSettings as FS

    settings = FS(scheme="v1", n_bits=16, ngram_bytes=2000)
    x = extract(parse(b"Subject: s\n\ncheap pills\n"), settings).vec
    assert abs(float(np.dot(x[1], x[1])) - 1.0) < 1e-5  # v1 features are L2-normalised
    feats = {
        k: v for k, v in settings.to_dict().items() if k not in ("scheme", "raw_tokens", "receiver_headers")
    }
    meta = {
        "format": "mailsift-model",
        "format_version": 1,
        "kind": "logistic-regression",
        "features": feats,
        "train": {
            "lr": 40.0,
            "thick": 4.0,
            "epochs": 5,
            "shuffles": 4,
            "seed": 0,
            "ham_weight": 2.0,
            "online_lr": 10.0,
        },
        "platt": [0.5, -1.0],
        "n_ham": 3,
        "n_spam": 4,
        "trained_at": "",
        "info": {"generic": True},
    }
    slots = x[0].astype(np.uint32)
    path = tmp_path / "v1.npz"
    np.savez_compressed(
        path,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        slots=slots,
        weights=np.full(len(slots), 2.0, dtype=np.float16),
        bias=np.array([0.25]),
        ledger_digest=np.zeros(0, dtype="S16"),
        ledger_label=np.zeros(0, dtype=np.int8),
        ledger_step=np.zeros(0, dtype=np.float32),
    )
    model = LinearModel.load(path)
    assert model.settings.scheme == "v1" and model.info["generic"]
    assert model.margin(x) == pytest.approx(2.0 * float(x[1].sum()) + 0.25, rel=1e-5)
    assert model.info["format_1_train"]["lr"] == 40.0


def _limited(model, budget):
    model.params = replace(model.params, max_erosion=budget)
    return model


def test_a_step_takes_back_at_most_max_erosion_of_the_evidence_against_its_label(toy_model):
    """A ham-looking message clicked as spam: the weights that pointed to ham
    give back at most ``max_erosion`` of margin in all; its new features still
    move at the full AdaGrad rate."""
    x = _vec("meeting notes for the kernel patch review tomatoes gardening compost")
    free = LinearModel(SMALL, replace(toy_model.params, max_erosion=0.0))
    free.w, free.acc = toy_model.w.copy(), toy_model.acc.copy()
    _limited(toy_model, 0.02)
    w0 = toy_model.w[x[0]].copy()
    g, scale = toy_model._step(x, True)
    free.step(x, True)
    delta, full = toy_model.w[x[0]] - w0, free.w[x[0]] - w0
    eroding = w0 * full < 0
    assert eroding.any() and np.abs(full[eroding]).sum() > 0.02
    assert 0 < scale < 1 and np.abs(delta[eroding]).sum() == pytest.approx(0.02, rel=1e-4)
    assert np.allclose(delta[~eroding], full[~eroding], rtol=1e-6, atol=0)
    new = w0 == 0
    assert new.any() and np.all(delta[new] > 0)


def test_the_erosion_limit_grows_with_the_messages_learned(toy_model):
    """Up to ``erosion_grows_after`` learned messages the limit is
    ``max_erosion``; beyond, in proportion: the 60-message toy model at
    ``erosion_grows_after`` 30 may erode twice ``max_erosion``."""
    x = _vec("meeting notes for the kernel patch review tomatoes gardening compost")
    w0 = toy_model.w[x[0]].copy()
    assert toy_model.n_ham + toy_model.n_spam == 60  # fit counts its messages
    toy_model.params = replace(toy_model.params, max_erosion=0.01, erosion_grows_after=30)
    toy_model.step(x, True)
    delta = toy_model.w[x[0]] - w0
    eroding = w0 * delta < 0
    assert np.abs(delta[eroding]).sum() == pytest.approx(0.02, rel=1e-4)


def test_a_step_well_inside_the_limit_is_the_plain_adagrad_step(toy_model):
    x = _vec("cheap pills buy now offer 7 viagra casino winner")
    free = LinearModel(SMALL, replace(toy_model.params, max_erosion=0.0))
    free.w, free.acc = toy_model.w.copy(), toy_model.acc.copy()
    assert toy_model._step(x, False)[1] == 1.0
    free.step(x, False)
    assert np.array_equal(toy_model.w, free.w) and np.array_equal(toy_model.acc, free.acc)


def test_learn_then_unlearn_is_exact_when_the_erosion_limit_cut_the_step(toy_model, tmp_path):
    """The scale the limit applied is kept in the ledger (and the file), so
    unlearn takes back exactly the step that was taken."""
    raw = b"Subject: s\n\nmeeting notes for the kernel patch review tomatoes gardening compost\n"
    vec = extract(parse(raw), SMALL).vec
    digest = message_digest(raw)
    _limited(toy_model, 0.02)
    probes = [
        _vec(t) for t in ("buy cheap pills", "patch review", "kernel meeting notes", "tomatoes gardening")
    ]
    p0, w0, acc0 = toy_model.predict_proba(probes)[:, 1], toy_model.w.copy(), toy_model.acc.copy()
    assert toy_model.learn_one(vec, True, digest)[0] == "learned"
    assert 0 < toy_model.ledger.scales[digest] < 1
    assert np.abs(toy_model.predict_proba(probes)[:, 1] - p0).max() > 1e-3
    toy_model.save(tmp_path / "m.npz")
    loaded = LinearModel.load(tmp_path / "m.npz")
    assert loaded.ledger.scales == toy_model.ledger.scales
    assert loaded.unlearn_one(vec, digest) == ("unlearned", 1)
    assert np.abs(loaded.predict_proba(probes)[:, 1] - p0).max() < 1e-4
    assert np.allclose(loaded.w, w0, atol=1e-6) and np.allclose(loaded.acc, acc0, atol=1e-6)
    assert not loaded.ledger.scales


def _rewrite(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["train"].update(changes.pop("train", {}))
    for key in changes.pop("unset", ()):
        meta["train"].pop(key)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    for key in changes.pop("drop", ()):
        arrays.pop(key)
    np.savez(path, **arrays)


def test_format_2_files_from_before_max_erosion_load_with_unlimited_ledger_steps(tmp_path, toy_model):
    """Earlier format-2 files wrote ``max_move`` (always 0) and no
    ``ledger_scale``: they load, their learned steps reverse as unlimited."""
    path = tmp_path / "m.npz"
    raw = b"Subject: s\n\nsomething learned before the upgrade\n"
    toy_model.learn_one(extract(parse(raw), SMALL).vec, True, message_digest(raw))
    toy_model.save(path)
    _rewrite(path, train={"max_move": 0.0}, unset=["max_erosion"], drop=["ledger_scale"])
    loaded = LinearModel.load(path)
    assert loaded.params.max_erosion == TrainParams().max_erosion and not loaded.ledger.scales
    assert message_digest(raw) in loaded.ledger.digests
    _rewrite(path, train={"max_move": 2.0})
    with pytest.raises(ModelError, match="max_move is no longer supported"):
        LinearModel.load(path)


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
