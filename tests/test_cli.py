"""The command line, run as a user runs it: a subprocess of the installed
``mailsift`` entry point (``python -m mailsift.cli`` for the same code)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mailsift.corpus import read_index
from mailsift.train import message_digest


def run(*args, stdin: bytes | None = None, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mailsift.cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=cwd,
    )


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No user config or user model leaks in from the machine."""
    import os

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("MAILSIFT_CONFIG", None)
    return env


def _pick(items, spam: bool, n: int = 1):
    return [i.path for i in items if i.spam == spam][:n]


def test_score_with_the_shipped_default_model_names_it(sa_test, isolated_env):
    ham = _pick(sa_test, False)[0]
    r = run("score", ham, env=isolated_env)
    assert r.returncode in (0, 1), r.stderr
    out = r.stdout.decode()
    assert out.startswith(("ham ", "spam ")) and "default-model.npz" in out
    assert b"shipped default model" in r.stderr


def test_score_json_has_the_contract_keys_and_exit_status_follows_action(split_model, sa_test, isolated_env):
    model, _ = split_model
    for spam in (False, True):
        path = _pick(sa_test, spam)[0]
        r = run("score", "--json", "--model", model, path, env=isolated_env)
        verdict = json.loads(r.stdout)
        for key in ("probability", "score", "action", "evidence"):
            assert key in verdict
        assert r.returncode == (1 if verdict["action"] != "accept" else 0)
        assert r.returncode == int(spam), (path, verdict["score"])
        assert verdict["evidence"] and all({"feature", "weight"} <= set(e) for e in verdict["evidence"])


def test_score_reads_stdin_and_explain_shows_the_arithmetic(split_model, sa_test, isolated_env):
    model, _ = split_model
    raw = _pick(sa_test, True)[0].read_bytes()
    r = run("score", "--explain", "--model", model, "-", stdin=raw, env=isolated_env)
    out = r.stdout.decode()
    assert r.returncode == 1
    assert "p(spam)" in out and "points" in out
    assert "strongest features toward spam" in out and "strongest features toward ham" in out


def test_score_missing_file_is_exit_66_with_one_line(isolated_env, tmp_path):
    r = run("score", tmp_path / "nope.eml", env=isolated_env)
    assert r.returncode == 66
    assert r.stderr.decode().strip().count("\n") == 0 and "nope.eml: no such file" in r.stderr.decode()


def test_score_with_corrupt_model_is_exit_65_naming_the_model(isolated_env, tmp_path, message_bytes):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    msg = tmp_path / "m.eml"
    msg.write_bytes(message_bytes())
    r = run("score", "--model", bad, msg, env=isolated_env)
    assert r.returncode == 65
    assert str(bad) in r.stderr.decode()


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00binary"], ids=["empty", "binary"])
def test_score_of_non_mail_gives_a_verdict_and_a_warning(content, isolated_env):
    r = run("score", "-", stdin=content, env=isolated_env)
    assert r.returncode in (0, 1)  # a verdict: a filter must answer
    assert r.stdout.decode().startswith(("ham score=", "spam score="))
    assert "warning: stdin: not a mail message" in r.stderr.decode()


def test_bad_usage_and_bad_config_exit_codes(isolated_env, tmp_path, message_bytes):
    assert run("score", env=isolated_env).returncode == 64
    assert run("frobnicate", env=isolated_env).returncode == 64
    assert run(env=isolated_env).returncode == 64
    cfg = tmp_path / "c.toml"
    cfg.write_text("[thresholds]\nadd_heder = 3\n")
    msg = tmp_path / "m.eml"
    msg.write_bytes(message_bytes())
    r = run("--config", cfg, "score", msg, env=isolated_env)
    assert r.returncode == 78 and "add_heder" in r.stderr.decode()


def test_config_thresholds_change_the_action(split_model, sa_test, isolated_env, tmp_path):
    model, _ = split_model
    ham = _pick(sa_test, False)[0]
    cfg = tmp_path / "c.toml"
    cfg.write_text("[thresholds]\nadd_header = -1000\nreject = -900\n")
    r = run("--config", cfg, "score", "--json", "--model", model, ham, env=isolated_env)
    assert json.loads(r.stdout)["action"] == "reject" and r.returncode == 1


def test_train_refuses_too_few_messages_per_class(tmp_path, sa_train, isolated_env):
    ham_dir, spam_dir = tmp_path / "ham", tmp_path / "spam"
    ham_dir.mkdir()
    spam_dir.mkdir()
    for p in _pick(sa_train, False, 60):
        shutil.copy(p, ham_dir)
    for p in _pick(sa_train, True, 5):
        shutil.copy(p, spam_dir)
    out = tmp_path / "m.npz"
    r = run("train", "--ham", ham_dir, "--spam", spam_dir, "--model", out, env=isolated_env)
    assert r.returncode == 65
    assert "have 60 ham and 5 spam" in r.stderr.decode() and "at least 50" in r.stderr.decode()
    assert not out.exists()


def test_train_from_maildir_and_mbox_then_score_round_trip(tmp_path, sa_train, sa_test, isolated_env):
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    for n, p in enumerate(_pick(sa_train, False, 200)):
        shutil.copy(p, md / "cur" / f"{n}:2,S")
    shutil.copy(_pick(sa_train, False, 201)[-1], md / "cur" / "dup:2,S")
    shutil.copy(_pick(sa_train, False, 1)[0], md / "new" / "same-as-first")  # a duplicate
    mbox = tmp_path / "spam.mbox"
    with mbox.open("wb") as fh:
        for p in _pick(sa_train, True, 200):
            body = p.read_bytes().replace(b"\nFrom ", b"\n>From ")
            fh.write(b"From spammer@example.com Mon Jul  1 10:00:00 2002\n" + body + b"\n")
    out = tmp_path / "own.npz"
    r = run("train", "--ham", md, "--spam", mbox, "--model", out, env=isolated_env)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    spam_unique = len({message_digest(p.read_bytes()) for p in _pick(sa_train, True, 200)})
    assert f"read 201 ham and {spam_unique} spam" in text
    assert f"{1 + 200 - spam_unique} duplicates dropped" in text
    assert "cross-validation" in text and out.exists()
    # the trained model separates held-out mail
    r = run(
        "eval", "--test", _small_test_index(tmp_path, sa_test), "--model", out, "--json", env=isolated_env
    )
    m = json.loads(r.stdout)
    assert m["one_minus_auc_pct"] < 1.0, m


def _small_test_index(tmp_path, sa_test):
    from conftest import write_index

    ham = [i for i in sa_test if not i.spam][:100]
    spam = [i for i in sa_test if i.spam][:100]
    return write_index(tmp_path / "t.index", ham + spam)


def test_learn_detects_repeats_and_unlearn_reverses(split_model, sa_test, tmp_path, isolated_env):
    model = tmp_path / "m.npz"
    shutil.copy(split_model[0], model)
    msg = _pick(sa_test, False)[0]
    r1 = run("learn", "--spam", msg, "--model", model, env=isolated_env)
    assert r1.returncode == 0 and b"learned as spam" in r1.stdout
    r2 = run("learn", "--spam", msg, "--model", model, env=isolated_env)
    assert r2.returncode == 0 and b"already learned as spam" in r2.stdout
    r3 = run("unlearn", "--ham", msg, "--model", model, env=isolated_env)
    assert r3.returncode == 65 and b"was learned as spam" in r3.stderr
    r4 = run("unlearn", "--spam", msg, "--model", model, env=isolated_env)
    assert r4.returncode == 0 and b"unlearned as spam" in r4.stdout
    train_msg = [i.path for i in read_index(msg.parents[1] / "train.index") if i.spam][0]
    r5 = run("learn", "--spam", train_msg, "--model", model, env=isolated_env)
    assert b"already learned as spam" in r5.stdout  # it was in the training set


def test_learn_refuses_to_modify_the_shipped_default(sa_test, isolated_env):
    from mailsift.filter import DEFAULT_MODEL

    r = run("learn", "--spam", "--model", DEFAULT_MODEL, _pick(sa_test, True)[0], env=isolated_env)
    assert r.returncode == 64 and b"shipped default model" in r.stderr


def test_eval_scores_file_recomputes_to_the_printed_metrics(small_indexes, tmp_path, isolated_env):
    train, test = small_indexes
    scores = tmp_path / "scores.txt"
    r = run("eval", "--train", train, "--test", test, "--json", "--scores", scores, env=isolated_env)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    rows = [line.split(" ", 2) for line in scores.read_text().splitlines()]
    labels = np.array([row[0] == "spam" for row in rows])
    values = np.array([float(row[1]) for row in rows])
    assert (m["n_ham"], m["n_spam"]) == (100, 100) and len(rows) == 200
    assert abs(m["one_minus_auc_pct"] - 100 * (1 - roc_auc_score(labels, values))) < 1e-3
    assert abs(m["fpr_pct"] - 100 * np.mean(values[~labels] >= 5.0)) < 1e-9
    assert m["msgs_per_s"] > 0


def test_eval_out_writes_scores_report_and_figures_that_agree(small_indexes, tmp_path, isolated_env):
    train, test = small_indexes
    out = tmp_path / "run"
    r = run("eval", "--train", train, "--test", test, "--out", out, env=isolated_env)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    m = report["runs"][0]["metrics"]
    rows = [line.split("\t") for line in (out / "scores.tsv").read_text().splitlines()]
    assert rows[0] == ["path", "label", "score"] and len(rows) == 201
    labels = np.array([row[1] == "spam" for row in rows[1:]])
    values = np.array([float(row[2]) for row in rows[1:]])
    assert abs(m["one_minus_auc_pct"] - 100 * (1 - roc_auc_score(labels, values))) < 1e-9
    assert m["train_msgs_per_s"] > 0 and m["msgs_per_s"] > 0
    md = (out / "report.md").read_text()
    assert "| mailsift |" in md and f"{m['one_minus_auc_pct']:.4f}" in md
    for png in ("roc.png", "hist.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "learning.png").exists()  # only online runs have a learning curve


def test_eval_online_out_draws_the_learning_curve(small_indexes, tmp_path, isolated_env):
    train, _ = small_indexes
    out = tmp_path / "online"
    r = run("eval", "--online", train, "--order", "shuffle", "--out", out, env=isolated_env)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "report.json").read_text())["runs"][0]["online"] is True
    assert (out / "learning.png").stat().st_size > 10_000


def test_eval_compare_puts_runs_on_one_table_and_refuses_different_tests(
    small_indexes, tmp_path, isolated_env
):
    train, test = small_indexes
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run("eval", "--train", train, "--test", test, "--out", a, env=isolated_env).returncode == 0
    r = run("eval", "--train", test, "--test", train, "--out", c, "--name", "swapped", env=isolated_env)
    assert r.returncode == 0, r.stderr
    shutil.copytree(a, b)
    meta = json.loads((b / "run.json").read_text())
    (b / "run.json").write_text(json.dumps({**meta, "name": "copy"}))
    r = run("eval", "--compare", a, b, "--out", tmp_path / "cmp", env=isolated_env)
    assert r.returncode == 0, r.stderr
    assert b"| mailsift |" in r.stdout and b"| copy |" in r.stdout
    names = [run_["name"] for run_ in json.loads((tmp_path / "cmp" / "report.json").read_text())["runs"]]
    assert names == ["mailsift", "copy"]
    r = run("eval", "--compare", a, c, "--out", tmp_path / "bad", env=isolated_env)
    assert r.returncode == 65 and b"scored different messages" in r.stderr
    assert run("eval", "--compare", a, env=isolated_env).returncode == 64  # --out is required


def test_eval_usage_errors(isolated_env, small_indexes):
    train, test = small_indexes
    assert run("eval", env=isolated_env).returncode == 64
    assert run("eval", "--online", train, "--test", test, env=isolated_env).returncode == 64
    r = run("eval", "--test", "/nonexistent/x.index", env=isolated_env)
    assert r.returncode == 66 and b"index file not found" in r.stderr


def test_serve_refuses_a_bad_proxy_config(isolated_env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[proxy]\nmode = "sideways"\n')
    r = run("--config", cfg, "serve", env=isolated_env)
    assert r.returncode == 78 and b"proxy.mode" in r.stderr
    cfg.write_text('[proxy]\nrelay = "nowhere"\n')
    r = run("--config", cfg, "serve", env=isolated_env)
    assert r.returncode == 78 and b"proxy.relay must be HOST:PORT" in r.stderr


def test_tune_reports_the_gain_and_writes_weights_the_config_can_load(
    split_model, small_indexes, tmp_path, isolated_env
):
    import tomllib

    _, test = small_indexes
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[thresholds]\nadd_header = 5.0\n\n[[dnsbl]]\nname = "RBL"\nzone = "rbl.test"\n'
        'codes = { "127.0.0.2" = [3.0, "listed"] }\n'
    )
    r = run("--config", cfg, "tune", "--index", test, "--model", split_model[0], env=isolated_env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "current weights" in out and "tuned (5-fold CV)" in out and "model weight" in out
    data = tomllib.loads(cfg.read_text())
    assert isinstance(data["model"]["weight"], float) and data["model"]["weight"] > 0
    assert "rule_weights" in data
    assert data["dnsbl"][0]["codes"] == {"127.0.0.2": [3.0, "listed"]}  # the rest survives
    assert (tmp_path / "c.toml.bak").exists()
    assert run("--config", cfg, "score", _ham_file(tmp_path), env=isolated_env).returncode in (0, 1)


def _ham_file(tmp_path):
    from conftest import HAM

    p = tmp_path / "ham.eml"
    p.write_bytes(HAM)
    return p


@pytest.mark.parametrize("folds", ["0", "1", "two"])
def test_train_refuses_fewer_than_two_cv_folds_before_reading(folds, small_indexes, isolated_env, tmp_path):
    # --cv-folds 0 used to train and print a meaningless 50% AUC
    out = tmp_path / "m.npz"
    r = run("train", "--index", small_indexes[0], "--cv-folds", folds, "--model", out, env=isolated_env)
    assert r.returncode == 64 and b"--cv-folds" in r.stderr and r.stdout == b""
    assert not out.exists()


@pytest.mark.parametrize("where", ["/proc/x", "/proc/no-such-dir/model.npz", "FOLDER"])
def test_train_refuses_an_unwritable_model_path_before_training(where, small_indexes, isolated_env, tmp_path):
    out = tmp_path if where == "FOLDER" else where
    r = run("train", "--index", small_indexes[0], "--model", out, env=isolated_env)
    assert r.returncode == 73 and r.stdout == b""  # nothing read, nothing trained
    assert r.stderr.decode().count("\n") == 1 and f"train --model {out}" in r.stderr.decode()


def test_eval_refuses_unwritable_outputs_before_scoring(small_indexes, isolated_env, tmp_path):
    _, test = small_indexes
    r = run("eval", "--test", test, "--out", "/proc/report", env=isolated_env)
    assert r.returncode == 73 and r.stdout == b"" and b"eval --out" in r.stderr
    r = run("eval", "--test", test, "--scores", "/proc/x/scores.tsv", env=isolated_env)
    assert r.returncode == 73 and r.stdout == b"" and b"eval --scores" in r.stderr
    r = run("eval", "--test", test, "--scores", tmp_path / "no-such-dir" / "s.tsv", env=isolated_env)
    assert r.returncode == 73 and r.stdout == b"" and b"no folder" in r.stderr
    assert not (tmp_path / "no-such-dir").exists()  # the checks leave nothing behind


def test_scoring_and_filtering_never_import_matplotlib(isolated_env, tmp_path):
    """matplotlib is the optional 'plots' extra: a lean daemon install has none."""
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: hi\n\nhello\n")
    code = (
        "import sys, contextlib, io\n"
        "from mailsift.cli import main\n"
        "import mailsift.proxy, mailsift.pipe, mailsift.runs, mailsift.plots\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main(['score', {str(msg)!r}])\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=isolated_env)
    assert r.returncode == 0, r.stderr


def test_eval_out_without_matplotlib_says_how_to_install_it(small_indexes, isolated_env, tmp_path):
    # matplotlib made unimportable (as on a lean install): fails at once, nothing written
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from mailsift.cli import main\n"
        f"sys.exit(main(['eval', '--test', {str(small_indexes[1])!r}, '--out', {str(tmp_path / 'r')!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=isolated_env)
    assert r.returncode == 69 and r.stdout == b""
    assert b"pip install 'mailsift[plots]'" in r.stderr and not (tmp_path / "r").exists()


def test_eval_drops_test_messages_also_in_train_and_says_how_many(small_indexes, tmp_path, isolated_env):
    from conftest import write_index

    train, test = small_indexes
    train_items, test_items = read_index(train), read_index(test)
    leaked = train_items[:5] + train_items[-5:]  # 5 ham and 5 spam the model is trained on
    mixed = write_index(tmp_path / "mixed.index", test_items + leaked)
    seen = {message_digest(i.read()) for i in train_items}
    expected = sum(message_digest(i.read()) in seen for i in test_items + leaked)
    assert expected >= 10
    r = run("eval", "--train", train, "--test", mixed, "--json", env=isolated_env)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["test_duplicates_dropped"] == expected
    assert m["n_ham"] + m["n_spam"] == len(test_items) + len(leaked) - expected
    text = run("eval", "--train", train, "--test", mixed, env=isolated_env)
    assert f"{expected} test messages also in train dropped".encode() in text.stdout
    kept = json.loads(
        run("eval", "--train", train, "--test", mixed, "--json", "--keep-duplicates", env=isolated_env).stdout
    )
    assert kept["n_ham"] + kept["n_spam"] == len(test_items) + len(leaked)
    assert "test_duplicates_dropped" not in kept


def test_eval_repeated_train_options_add_up(small_indexes, tmp_path, isolated_env):
    from conftest import write_index

    train, test = small_indexes
    items = read_index(train)
    a = write_index(tmp_path / "a.index", items[::2])
    b = write_index(tmp_path / "b.index", items[1::2])
    r = run("eval", "--train", a, "--train", b, "--test", test, "--out", tmp_path / "run", env=isolated_env)
    assert r.returncode == 0, r.stderr
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["n_train"] == len({message_digest(i.read()) for i in items})


def test_repeated_source_options_add_up_in_every_command():
    from mailsift.cli import build_parser

    p = build_parser()
    for cmd in ("train", "tune"):
        a = p.parse_args([cmd, "--ham", "A", "--ham", "B", "C", "--spam", "D", "--spam", "E", "--index", "F"])
        assert (a.ham, a.spam, a.index) == (["A", "B", "C"], ["D", "E"], ["F"])
    a = p.parse_args(["eval", "--train", "A", "--train", "B", "--test", "T"])
    assert a.train == ["A", "B"] and not a.keep_duplicates
    a = p.parse_args(["corpus", "index", "D", "--ham-glob", "h1", "--ham-glob", "h2", "--spam-glob", "s"])
    assert a.ham_glob == ["h1", "h2"] and a.spam_glob == ["s"]
    p.parse_args(["train", "--ham", "A"])
    assert p.parse_args(["train"]).ham == []  # extending never grows the shared default


def test_portable_text_profile_trains_a_format_2_model_that_learns_and_unlearns(
    small_indexes, sa_test, tmp_path, isolated_env
):
    """The shipped default's recipe (decoded-text features, the v1 scheme)
    trained by the new learner: ``train`` writes a format-2 file with those
    settings, it scores, and a learn click on it is undone exactly by unlearn."""
    from mailsift.model import LinearModel
    from mailsift.train import PROFILES

    model = tmp_path / "generic.npz"
    r = run("train", "--index", small_indexes[0], "--features", "portable-text", "--generic",
            "--model", model, env=isolated_env)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    trained = LinearModel.load(model)
    assert trained.settings == PROFILES["portable-text"].features and trained.settings.scheme == "v1"
    assert trained.params == PROFILES["portable-text"].params and trained.info["generic"]
    assert json.loads(np.load(model)["meta"].tobytes())["format_version"] == 2
    spam = _pick(sa_test, True)[0]
    before = json.loads(run("score", "--json", "--model", model, spam, env=isolated_env).stdout)
    assert before["default_model"] and before["model_weight"] > 0
    r = run("learn", "--ham", "--model", model, spam, env=isolated_env)
    assert r.returncode == 0, r.stderr.decode()
    moved = json.loads(run("score", "--json", "--model", model, spam, env=isolated_env).stdout)
    assert moved["probability"] < before["probability"] - 1e-3
    r = run("unlearn", "--ham", "--model", model, spam, env=isolated_env)
    assert r.returncode == 0, r.stderr.decode()
    back = json.loads(run("score", "--json", "--model", model, spam, env=isolated_env).stdout)
    assert abs(back["probability"] - before["probability"]) < 1e-4
    assert np.allclose(LinearModel.load(model).w, trained.w, atol=1e-6)


def test_train_without_model_writes_the_user_model_into_a_folder_not_made_yet(
    small_indexes, isolated_env, tmp_path
):
    """A new user's first ``train``: ~/.local/share/mailsift does not exist
    yet; the model is written there (the lock beside it once failed first,
    after the training, and the trained model was lost)."""
    own = tmp_path / "data" / "mailsift" / "model.npz"
    assert not own.parent.exists()
    r = run("train", "--index", small_indexes[0], env=isolated_env)
    assert r.returncode == 0, r.stderr.decode()
    assert f"model written to {own}" in r.stdout.decode()
    assert own.is_file()
