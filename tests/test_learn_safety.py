"""Teaching the model is safe to click: concurrent learns all land, input that
is not mail is refused or skipped with its reason, repeated options add up,
and a message is the same message however it was delivered."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time

import pytest

from mailsift.config import Config
from mailsift.filter import Filter
from mailsift.model import LinearModel
from mailsift.report import add_headers, spam_headers
from mailsift.train import message_digest


def _cmd(*args):
    return [sys.executable, "-m", "mailsift.cli", *map(str, args)]


def run(*args, stdin: bytes | None = None, env=None):
    return subprocess.run(_cmd(*args), input=stdin, capture_output=True, env=env)


@pytest.fixture
def env(tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("MAILSIFT_CONFIG", None)
    return env


@pytest.fixture
def model(tmp_path, small_model):
    path = tmp_path / "model.npz"
    shutil.copy(small_model, path)
    return path


def _test_spam(sa_test, n):
    return [i.path for i in sa_test if i.spam][:n]


def _ledger(path) -> dict:
    return LinearModel.load(path).ledger.digests


def test_eight_concurrent_learns_are_all_kept_then_all_already_learned(model, sa_test, env):
    messages = _test_spam(sa_test, 8)
    digests = [message_digest(p.read_bytes()) for p in messages]
    assert len(set(digests)) == 8 and not set(digests) & set(_ledger(model))
    before = len(_ledger(model))
    for expect in (b"learned as spam", b"already learned as spam"):
        procs = [
            subprocess.Popen(_cmd("learn", "--spam", m, "--model", model), stdout=subprocess.PIPE, env=env)
            for m in messages
        ]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * 8
        assert all(expect in out for out in outs), outs
        ledger = _ledger(model)
        assert len(ledger) == before + 8
        assert all(ledger[d][0] == 1 for d in digests)


def test_learn_waits_for_the_models_lock(model, sa_test, env):
    lock = os.open(model.with_name(model.name + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    before = model.read_bytes()
    proc = subprocess.Popen(
        _cmd("learn", "--spam", _test_spam(sa_test, 1)[0], "--model", model), stdout=subprocess.PIPE, env=env
    )
    try:
        time.sleep(3)  # ample for a learn that ignored the lock to finish
        assert proc.poll() is None and model.read_bytes() == before
    finally:
        os.close(lock)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"learned as spam" in out and model.read_bytes() != before


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", b"empty"),
        (b" \n\r\n\t", b"empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", b"binary"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(200), b"binary"),
        (b"hello, this is just some text\nwith no header\n", b"no header block"),
        (b"From a@b Mon Jul  1 10:00:00 2024\nplain text after the envelope line\n", b"no header block"),
        (b"Subject: ok\nX-Bin: \x00\x00\x00\n\nbody", b"NUL bytes in the header block"),
    ],
)
def test_learn_refuses_input_that_is_not_mail_with_exit_65(model, tmp_path, env, content, reason):
    before = model.read_bytes()
    for verb in ("learn", "unlearn"):
        r = run(verb, "--spam", "-", "--model", model, stdin=content, env=env)
        assert r.returncode == 65, r.stderr
        line = r.stderr.decode()
        assert line.count("\n") == 1 and "stdin" in line and reason.decode() in line
        f = tmp_path / "input.bin"
        f.write_bytes(content)
        r = run(verb, "--spam", f, "--model", model, env=env)
        assert r.returncode == 65 and str(f).encode() in r.stderr and reason in r.stderr
    assert model.read_bytes() == before


def test_learn_accepts_mail_with_a_nul_in_its_body(model, sa_test, tmp_path, env):
    # 4 real trec07p spams carry unencoded binary attachments
    raw = _test_spam(sa_test, 1)[0].read_bytes() + b"\n\x00\x00\x00 binary attachment\n"
    f = tmp_path / "m.eml"
    f.write_bytes(raw)
    r = run("learn", "--spam", f, "--model", model, env=env)
    assert r.returncode == 0 and b"learned as spam" in r.stdout


def test_a_message_learned_as_delivered_is_already_learned_raw(model, sa_test, tmp_path, env):
    config = Config()
    config.dnsbl, config.auth.enabled = [], False
    raw = _test_spam(sa_test, 1)[0].read_bytes()
    delivered = add_headers(raw, spam_headers(Filter(config).score(raw)))
    f = tmp_path / "delivered.eml"
    f.write_bytes(delivered)
    assert b"learned as spam" in run("learn", "--spam", f, "--model", model, env=env).stdout
    r = run("learn", "--spam", "-", "--model", model, stdin=raw, env=env)
    assert r.returncode == 0 and b"already learned as spam" in r.stdout
    r = run("unlearn", "--spam", "-", "--model", model, stdin=raw, env=env)
    assert r.returncode == 0 and b"unlearned as spam" in r.stdout


def _folder(path, items):
    path.mkdir(parents=True)
    for item in items:
        shutil.copy(item.path, path / item.path.name)
    return path


def test_train_skips_non_mail_files_naming_them_and_repeated_ham_options_add_up(sa_train, tmp_path, env):
    ham = [i for i in sa_train if not i.spam][:40]
    spam = [i for i in sa_train if i.spam][:30]
    ham_a, ham_b = _folder(tmp_path / "ham_a", ham[:20]), _folder(tmp_path / "ham_b", ham[20:])
    spam_dir = _folder(tmp_path / "spam", spam)
    (spam_dir / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100))
    (spam_dir / "notes.txt").write_bytes(b"just a note\n")
    out = tmp_path / "m.npz"
    r = run(
        "train", "--ham", ham_a, "--ham", ham_b, "--spam", spam_dir, "--model", out,
        "--min-per-class", 10, "--cv-folds", 2, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert b"read 40 ham and 30 spam" in r.stdout and b"2 skipped (not mail)" in r.stdout
    assert b"picture.png: binary" in r.stderr and b"notes.txt: no header block" in r.stderr
    assert out.is_file()


def test_repeated_spam_and_index_options_add_up_in_tune(sa_train, tmp_path, env):
    from conftest import write_index

    ham = [i for i in sa_train if not i.spam][:60]
    spam = [i for i in sa_train if i.spam][:60]
    a = write_index(tmp_path / "a.index", ham[:30] + spam[:30])
    b = write_index(tmp_path / "b.index", ham[30:] + spam[30:])
    r = run("tune", "--index", a, "--index", b, "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert b"60 ham, 60 spam" in r.stdout


def test_train_lock_is_the_same_sidecar_file(model, sa_train, tmp_path, env):
    """``train`` writing a model takes the lock ``learn`` takes, so a learn
    that read the old model cannot write it back over the new one."""
    lock = os.open(model.with_name(model.name + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    ham = _folder(tmp_path / "h", [i for i in sa_train if not i.spam][:12])
    spam = _folder(tmp_path / "s", [i for i in sa_train if i.spam][:12])
    before = model.read_bytes()
    proc = subprocess.Popen(
        _cmd("train", "--ham", ham, "--spam", spam, "--model", model, "--min-per-class", 10, "--cv-folds", 2),
        stdout=subprocess.PIPE,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # "read ...", then "trained in ..."
        assert lines[1].startswith(b"trained in"), lines
        time.sleep(2)  # ample for a save that ignored the lock
        assert proc.poll() is None and model.read_bytes() == before
    finally:
        os.close(lock)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"model written" in out and model.read_bytes() != before
