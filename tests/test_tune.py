"""``mailsift tune``: informational hits are never priced, mail the model was
trained on is counted and warned about (or left out), and what is written
always loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import replace

import pytest
from conftest import free_port, write_index
from dnslib import RCODE
from dnslib.server import BaseResolver, DNSServer

from mailsift import Filter
from mailsift.config import Config
from mailsift.rules.dnsbl import Zone
from mailsift.rules.names import is_informational
from mailsift.train import message_digest
from mailsift.tune import TuneError, tune


class _ServFail(BaseResolver):
    """Every query fails at once: each blocklist gives its *_TIMEOUT hit."""

    def resolve(self, request, handler):
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return reply


class _Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.fixture(scope="module")
def servfail_dns():
    port = free_port()
    server = DNSServer(_ServFail(), address="127.0.0.1", port=port, logger=_Quiet())
    server.start_thread()
    yield f"127.0.0.1:{port}"
    server.stop()


def _strip_received(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    return re.sub(rb"(?im)^received:.*\n(?:[ \t].*\n)*", b"", head + b"\n").rstrip(b"\n") + sep + body


def test_tune_never_prices_informational_hits(split_model, sa_test, servfail_dns):
    """Spam keeps its public Received hops (so the client address comes from
    there: CLIENT_FROM_RECEIVED, and the list fails: RCVD_IN_BROKEN_TIMEOUT);
    ham has none.  Those zero-point hits then separate the classes perfectly,
    and a tune that priced them would make DNS trouble a spam sign."""
    config = Config()
    config.dns = replace(config.dns, servers=[servfail_dns], timeout=0.5, deadline=1.0)
    config.dnsbl = [Zone("RCVD_IN_BROKEN", "broken.test", "ip", 2.0)]
    flt = Filter(config, str(split_model[0]))
    ham = [_strip_received(i.read()) for i in sa_test if not i.spam][:40]
    spam = [i.read() for i in sa_test if i.spam][:40]
    seen = {h.name for h in flt.score(spam[0]).hits}
    assert {"CLIENT_FROM_RECEIVED", "RCVD_IN_BROKEN_TIMEOUT"} <= seen  # the setup does what it says
    report = tune(flt, ham + spam, [False] * len(ham) + [True] * len(spam), 5.0)
    assert {"CLIENT_FROM_RECEIVED", "RCVD_IN_BROKEN_TIMEOUT"} <= set(report.unpriced)
    assert not [n for n in report.rule_weights if is_informational(n)]
    assert report.model_weight > 0


def test_tune_refuses_weights_from_mail_labelled_the_wrong_way_round(split_model, sa_test):
    flt = Filter(Config(), str(split_model[0]))
    ham = [i.read() for i in sa_test if not i.spam][:30]
    spam = [i.read() for i in sa_test if i.spam][:30]
    with pytest.raises(TuneError, match="do not predict the labels"):
        tune(flt, ham + spam, [True] * 30 + [False] * 30, 5.0)


def _run(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "mailsift.cli", *map(str, args)], capture_output=True, env=env
    )


@pytest.fixture
def env(tmp_path):
    e = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data")}
    e.pop("MAILSIFT_CONFIG", None)
    return e


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, small_indexes):
    """A model trained through the CLI on the small training index."""
    out = tmp_path_factory.mktemp("tune-model") / "model.npz"
    r = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "train", "--index", small_indexes[0], "--model", out],
        capture_output=True,
    )
    assert r.returncode == 0, r.stderr
    return out


def _digests(index) -> list[tuple[bytes, bool]]:
    from mailsift.corpus import read_index

    return [(message_digest(i.read()), i.spam) for i in read_index(index)]


def test_tune_warns_when_its_mail_is_the_models_training_mail(small_model, small_indexes, tmp_path, env):
    train, _ = small_indexes
    r = _run("tune", "--dry-run", "--index", train, "--model", small_model, env=env)
    assert r.returncode == 0, r.stderr
    n = len(_digests(train))  # every one is in the ledger (duplicates share a digest)
    err = r.stderr.decode()
    assert f"WARNING: {n} of {n} labelled messages (100%) are mail the model was trained on" in err
    assert "--skip-trained" in err and "overconfident" in err


def test_tune_skip_trained_leaves_the_training_mail_out(small_model, small_indexes, tmp_path, env):
    train, test = small_indexes
    trained = {d for d, _ in _digests(train)}
    both = _digests(train) + _digests(test)
    left = [spam for d, spam in both if d not in trained]
    cfg = tmp_path / "c.toml"
    cfg.write_text("[thresholds]\nadd_header = 5.0\n")
    args = ("--config", cfg, "tune", "--skip-trained", "--model", small_model, "--index")
    r = _run(*args, train, test, env=env)
    assert r.returncode == 0, r.stderr
    assert f"left out {len(both) - len(left)} of {len(both)} labelled messages" in r.stderr.decode()
    assert r.stdout.decode().startswith(f"{left.count(False)} ham, {left.count(True)} spam;")
    assert tomllib.loads(cfg.read_text())["model"]["weight"] > 0
    # nothing left to tune on: a clear error, exit 65, the config untouched
    before = cfg.read_text()
    r = _run(*args, train, env=env)
    assert r.returncode == 65 and b"left after leaving out the mail the model was trained on" in r.stderr
    assert cfg.read_text() == before


def test_tune_writes_nothing_when_the_fit_is_unusable(split_model, sa_test, tmp_path, env):
    items = [i for i in sa_test if not i.spam][:60] + [i for i in sa_test if i.spam][:60]
    swapped = write_index(tmp_path / "swapped.index", [replace(i, spam=not i.spam) for i in items])
    cfg = tmp_path / "c.toml"
    cfg.write_text("[thresholds]\nadd_header = 5.0\n")
    r = _run("--config", cfg, "tune", "--index", swapped, "--model", split_model[0], env=env)
    assert r.returncode == 65 and b"nothing written" in r.stderr
    assert cfg.read_text() == "[thresholds]\nadd_header = 5.0\n" and not (tmp_path / "c.toml.bak").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_tune_checks_its_config_can_be_written_before_reading_any_mail(env, tmp_path):
    env = {**env, "XDG_CONFIG_HOME": "/proc/no-such-dir"}
    # the index does not exist: reading it would fail with 66, so 73 shows the check came first
    r = _run("tune", "--index", tmp_path / "missing.index", env=env)
    assert r.returncode == 73, r.stderr
    assert b"/proc/no-such-dir/mailsift/config.toml" in r.stderr and b"nothing done" in r.stderr
