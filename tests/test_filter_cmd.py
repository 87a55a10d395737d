"""``mailsift filter``: the pipe filter for procmail, maildrop and Exim, run
as those programs run it (a subprocess reading stdin), and under Debian's
real procmail and maildrop.  The message always comes back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAM

from mailsift import Filter
from mailsift.config import Config
from mailsift.filter import DEFAULT_MODEL
from mailsift.report import add_headers, spam_headers

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "datasets" / "samples"
README = (ROOT / "README.md").read_text()
SPAM = (SAMPLES / "spam" / "spam-00001.eml").read_bytes()
UNKNOWN = b"X-Spam-Status: Unknown, scoring failed; message passed unscanned"


@pytest.fixture
def env(tmp_path):
    """No user config or model leaks in from the machine."""
    e = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data")}
    e.pop("MAILSIFT_CONFIG", None)
    return e


def _filter(stdin: bytes, *args, env):
    cmd = [sys.executable, "-m", "mailsift.cli", "filter", *map(str, args)]
    return subprocess.run(cmd, input=stdin, capture_output=True, env=env)


def _strip_ours(out: bytes, n: int) -> bytes:
    """The message minus the first n header lines (the ones filter added)."""
    lines = out.split(b"\n", n)
    return lines[n]


def test_filter_adds_the_same_headers_serve_adds_and_keeps_the_message(env):
    r = _filter(HAM, env=env)
    assert r.returncode == 0, r.stderr
    verdict = Filter(Config(), str(DEFAULT_MODEL)).score(HAM, evidence=3)
    assert r.stdout == add_headers(HAM, spam_headers(verdict))  # byte for byte what serve relays
    assert r.stdout.endswith(HAM) and b"X-Spam-Status: No, score=" in r.stdout


def test_filter_marks_spam_and_still_exits_0(env):
    r = _filter(SPAM, env=env)
    assert r.returncode == 0  # unlike 'score', the status is not the verdict: a filter must succeed
    assert b"\nX-Spam-Flag: YES\n" in r.stdout and b"X-Spam-Status: Yes, score=" in r.stdout


def test_the_mbox_from_line_stays_first(env):
    assert SPAM.startswith(b"From ")  # procmail hands filters the message with its From_ line
    out = _filter(SPAM, env=env).stdout
    first, rest = out.split(b"\n", 1)
    assert first + b"\n" == SPAM[: SPAM.index(b"\n") + 1]
    assert rest.startswith(b"X-Spam-Flag: YES\n") and out.count(b"\nFrom 12a1mailbot1") == 0


def test_a_forged_spam_verdict_in_the_message_is_replaced(env):
    forged = b"X-Spam-Flag: NO\nX-Spam-Status: No, score=-50\n" + SPAM.split(b"\n", 1)[1]
    out = _filter(forged, env=env).stdout
    assert b"X-Spam-Flag: NO" not in out and out.count(b"X-Spam-Status:") == 1


def test_a_corrupt_model_passes_the_message_unchanged_marked_unknown(env, tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"not a model at all")
    r = _filter(HAM, "--model", bad, env=env)
    assert r.returncode == 0
    assert r.stdout == UNKNOWN + b"\r\n" + HAM  # the message's own line endings
    assert r.stderr.count(b"\n") == 1 and b"ModelError" in r.stderr and str(bad).encode() in r.stderr


def test_a_bad_config_passes_the_message_marked_unknown(env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nweight = -3\n")
    r = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "--config", cfg, "filter"],
        input=SPAM,
        capture_output=True,
        env=env,
    )
    assert r.returncode == 0
    assert _strip_ours(r.stdout.split(b"\n", 1)[1], 1) == SPAM.split(b"\n", 1)[1]
    assert UNKNOWN in r.stdout and b"model.weight must be > 0" in r.stderr


def test_scoring_past_the_deadline_passes_the_message_marked_unknown(env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[proxy]\nscoring_deadline = 0.000001\n")  # shorter than any parse
    r = _filter(HAM, "--config", cfg, env=env)
    assert r.returncode == 0 and r.stdout == UNKNOWN + b"\r\n" + HAM
    assert b"ScoringTimeout: scoring took longer than 1e-06 s" in r.stderr


def test_dns_that_never_answers_is_cut_off_at_the_scoring_deadline(env, tmp_path):
    """The deadline also stops the network rules (their own guards cannot
    swallow it): a blocklist server that never answers, 5 s DNS timeouts,
    a 0.5 s scoring deadline."""
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        port = blackhole.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'[dns]\nservers = ["127.0.0.1:{port}"]\ntimeout = 5.0\ndeadline = 5.0\n'
            '[proxy]\nscoring_deadline = 0.5\n[[dnsbl]]\nname = "RBL"\nzone = "rbl.test"\n'
        )
        start = time.monotonic()
        r = _filter(HAM, "--config", cfg, "--ip", "81.2.69.1", env=env)
        elapsed = time.monotonic() - start
    assert r.returncode == 0 and r.stdout == UNKNOWN + b"\r\n" + HAM
    assert b"scoring took longer than 0.5 s" in r.stderr
    assert elapsed < 4.5, elapsed  # not the 5 s the DNS timeout would take


@pytest.mark.parametrize(
    "raw",
    [
        os.urandom(200_000),  # binary garbage, no header block at all
        b"",  # nothing
        b"Subject: =?utf-8?B?////?=\n" + b"Content-Type: multipart/mixed; boundary=x\n\n" + b"--x\n" * 5000,
        b"Subject: big\n\n" + b"A" * 8_000_000,  # bigger than anything parsed
    ],
    ids=["binary", "empty", "broken-mime", "8MB"],
)
def test_bad_mail_always_comes_back_whole(env, raw):
    r = _filter(raw, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"X-Spam-") and r.stdout.endswith(raw)
    head = r.stdout[: len(r.stdout) - len(raw)]
    assert all(line.startswith(b"X-") for line in head.splitlines())


def test_unreadable_input_is_exit_74_with_nothing_written(env, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "filter", tmp_path], capture_output=True, env=env
    )  # a folder: cannot be read as a message
    assert r.returncode == 74 and r.stdout == b"" and b"cannot read the message" in r.stderr


def _mailsift_command(tmp_path: Path) -> Path:
    """A wrapper script standing for the installed ``mailsift`` entry point
    (this checkout's code, this interpreter; procmail and maildrop reset PATH)."""
    script = tmp_path / "mailsift"
    pythonpath = os.environ.get("PYTHONPATH", "")
    script.write_text(
        f"#!/bin/sh\nPYTHONPATH={pythonpath} XDG_CONFIG_HOME={tmp_path}/cfg XDG_DATA_HOME={tmp_path}/data "
        f'exec {sys.executable} -m mailsift.cli "$@"\n'
    )
    script.chmod(0o755)
    return script


def _readme_block(after: str) -> str:
    """The first code block after the line starting with ``after`` in the
    README's pipe-filter section: the tests run exactly what it says."""
    section = README.split("## As a pipe filter", 1)[1]
    return section.split("\n" + after, 1)[1].split("```\n", 1)[1].split("```", 1)[0]


def _headers(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[0]


@pytest.mark.skipif(not shutil.which("procmail"), reason="Debian's procmail is in .ci/run's PACKAGES")
def test_the_readme_procmail_recipe_files_spam_in_junk_and_ham_in_the_inbox(tmp_path):
    recipe = _readme_block("procmail (")
    assert recipe.startswith(":0fw\n| mailsift filter\n")
    rc = tmp_path / "procmailrc"
    rc.write_text(
        f"SHELL=/bin/sh\nMAILDIR={tmp_path}\nDEFAULT={tmp_path}/inbox\nLOGFILE={tmp_path}/procmail.log\n"
        + recipe.replace("mailsift filter", f"{_mailsift_command(tmp_path)} filter")
    )
    # as the MTA hands it to procmail: with the mbox From_ line (procmail -d writes one if missing)
    ham_in = b"From alice@example.org  Mon Jul  1 10:00:00 2024\n" + HAM.replace(b"\r\n", b"\n")
    for raw in (ham_in, SPAM):
        r = subprocess.run(["procmail", "-m", rc], input=raw, capture_output=True, timeout=60)
        assert r.returncode == 0, (r.stderr, (tmp_path / "procmail.log").read_text())
    inbox, junk = (tmp_path / "inbox").read_bytes(), (tmp_path / "Junk").read_bytes()
    assert inbox.count(b"\nFrom ") == 0 and inbox.startswith(b"From alice@example.org ")  # From_ first
    assert b"\nX-Spam-Status: No, score=" in _headers(inbox) and b"See you at noon." in inbox
    assert junk.startswith(SPAM.split(b"\n", 1)[0]) and b"\nX-Spam-Flag: YES\n" in _headers(junk)
    assert junk.split(b"\n\n", 1)[1].rstrip(b"\n") == SPAM.split(b"\n\n", 1)[1].rstrip(b"\n")  # body whole


@pytest.mark.skipif(not shutil.which("maildrop"), reason="Debian's maildrop is in .ci/run's PACKAGES")
def test_the_readme_maildrop_filter_files_spam_in_junk_and_ham_in_the_inbox(tmp_path):
    recipe = _readme_block("maildrop (")
    assert recipe.startswith('xfilter "mailsift filter"\n')
    maildirs = [tmp_path / "Maildir", tmp_path / "Maildir" / ".Junk"]
    for folder in maildirs:
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True)
    rules = tmp_path / "mailfilter"
    # maildrop takes $HOME from the password file, not the environment: spell the test's out
    rules.write_text(
        f'DEFAULT="{tmp_path}/Maildir/"\n'
        + recipe.replace("mailsift filter", f"{_mailsift_command(tmp_path)} filter").replace(
            "$HOME", str(tmp_path)
        )
    )
    rules.chmod(0o600)
    for raw in (HAM.replace(b"\r\n", b"\n"), SPAM):
        r = subprocess.run(["maildrop", rules], input=raw, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
    ((ham_file,), (spam_file,)) = [list((folder / "new").iterdir()) for folder in maildirs]
    ham, spam = ham_file.read_bytes(), spam_file.read_bytes()
    assert b"X-Spam-Status: No, score=" in _headers(ham) and ham.endswith(b"See you at noon.\n")
    assert b"X-Spam-Flag: YES\n" in _headers(spam)
    assert spam.split(b"\n\n", 1)[1] == SPAM.split(b"\n\n", 1)[1]
