"""`mailsift serve` as an operator runs it: a separate process, driven by
signals and by files changing on disk."""

from __future__ import annotations

import email
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time

import pytest
from conftest import HAM, free_port

from mailsift.filter import DEFAULT_MODEL


class Served:
    def __init__(self, tmp_path, sink, model):
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "d")}
        env.pop("MAILSIFT_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailsift.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--relay", f"127.0.0.1:{sink.port}", "--workers", "1", "--model", str(model)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=env,
        )  # fmt: skip
        self.wait_for_log("listening on", 30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, seconds: float, count: int = 1) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.log_text().count(text) >= count:
                return
            assert self.proc.poll() is None, self.log_text()
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in the log:\n{self.log_text()}")

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=30)

    def stop(self) -> None:
        """Gracefully (SIGTERM shuts the scoring pool down), then by force."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def children(self) -> list[int]:
        """The scoring workers (Linux /proc)."""
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        with open(path) as fh:
            return [int(pid) for pid in fh.read().split()]


@pytest.fixture
def served(tmp_path, sink):
    started = []

    def start(model) -> Served:
        s = Served(tmp_path, sink, model)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def test_sigterm_lets_the_session_in_flight_finish_then_exits(served, sink, tmp_path):
    srv = served(DEFAULT_MODEL)
    c = srv.client()
    c.ehlo()
    assert c.mail("s@example.org")[0] == 250
    assert c.rcpt("a@example.net")[0] == 250
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_for_log("stopping", 10)
    with pytest.raises(OSError):  # no new sessions
        smtplib.SMTP("127.0.0.1", srv.port, timeout=5)
    assert c.data(HAM)[0] == 250  # the one in flight completes
    c.quit()
    assert srv.proc.wait(20) == 0
    assert len(sink.received) == 1
    assert "stopped" in srv.log_text()


def _gone(pid: int) -> bool:
    """Exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return any(line.split()[1:2] == ["Z"] for line in fh if line.startswith("State:"))
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_scoring_workers_exit_when_the_filter_is_killed(served, sink):
    srv = served(DEFAULT_MODEL)
    with srv.client() as c:
        c.sendmail("s@example.org", ["a@example.net"], HAM)  # the pool has started its worker
    workers = srv.children()
    assert workers
    srv.proc.kill()  # SIGKILL: no chance to shut the pool down
    srv.proc.wait(10)
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in workers)


def _score_of(sink) -> float:
    return float(email.message_from_bytes(sink.received[-1][2])["X-Spam-Score"])


def test_model_is_reloaded_on_sighup_and_a_bad_one_is_refused(served, sink, tmp_path, split_model, sa_test):
    model = tmp_path / "model.npz"
    shutil.copy(DEFAULT_MODEL, model)
    srv = served(model)
    spam = [i for i in sa_test if i.spam][3].read()
    with srv.client() as c:
        c.sendmail("s@example.org", ["a@example.net"], spam)
    default_score = _score_of(sink)

    # a broken model file appears: refused, the old model keeps scoring
    model.write_bytes(b"this is not a model")
    srv.wait_for_log("reload refused", 15)
    with srv.client() as c:
        c.sendmail("s@example.org", ["a@example.net"], spam)
    assert _score_of(sink) == default_score

    # a good new model + SIGHUP while a session is open: the session survives
    c = srv.client()
    c.ehlo()
    assert c.mail("s@example.org")[0] == 250
    tmp = tmp_path / "new.npz"
    shutil.copy(split_model[0], tmp)
    os.replace(tmp, model)
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log("reloaded: model", 15)
    assert c.rcpt("a@example.net")[0] == 250
    assert c.data(spam)[0] == 250
    c.quit()
    assert _score_of(sink) != default_score
    assert len(sink.received) == 3
