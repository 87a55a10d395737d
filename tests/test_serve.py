"""`mailsift serve` as an operator runs it: a separate process, driven by
signals and by files changing on disk."""

from __future__ import annotations

import email
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time

import pytest
from conftest import HAM, free_port

from mailsift.filter import DEFAULT_MODEL


class Served:
    def __init__(self, tmp_path, sink, model, config: str = "", args: tuple = ()):
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "d")}
        env.pop("MAILSIFT_CONFIG", None)
        if config:
            (tmp_path / "cfg" / "mailsift").mkdir(parents=True, exist_ok=True)
            (tmp_path / "cfg" / "mailsift" / "config.toml").write_text(config)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailsift.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--relay", f"127.0.0.1:{sink.port}", "--workers", "1", "--model", str(model), *args],
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
        """Every process the filter started, and theirs (Linux /proc): the
        scoring workers, and under forkserver the fork server and
        multiprocessing's resource tracker."""
        return _descendants(self.proc.pid)

    def workers(self) -> list[int]:
        """The scoring workers only."""
        direct = _children(self.proc.pid)
        return [
            pid
            for pid in self.children()
            if "resource_tracker" not in _cmdline(pid)
            and not (pid in direct and "forkserver" in _cmdline(pid))
        ]

    def wait_for_workers(self, n: int = 1, exclude=(), seconds: float = 20) -> list[int]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [pid for pid in self.workers() if pid not in exclude and not _gone(pid)]
            if len(found) >= n:
                return found
            time.sleep(0.1)
        raise AssertionError(
            f"no {n} scoring worker(s) besides {exclude}: {self.children()}\n{self.log_text()}"
        )


def _children(pid: int) -> list[int]:
    try:
        out = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(p) for p in fh.read().split()]
        return out
    except FileNotFoundError:
        return []


def _descendants(pid: int) -> list[int]:
    out = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


@pytest.fixture
def served(tmp_path, sink):
    started = []

    def start(model, config: str = "", args: tuple = ()) -> Served:
        s = Served(tmp_path, sink, model, config, args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_sigterm_refuses_new_connections_at_once_while_the_session_in_flight_finishes(
    served, sink, tmp_path, method
):
    """The port refuses connections within a second of SIGTERM (no worker
    holds the listening socket, not even one forked after the filter began
    listening), and a session in the middle of a transaction completes."""
    srv = served(DEFAULT_MODEL, f'[proxy]\nstart_method = "{method}"\n')
    [first] = srv.wait_for_workers()
    os.kill(first, signal.SIGKILL)  # its replacement starts while the filter listens
    with srv.client() as c:
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    srv.wait_for_workers(exclude=[first])
    c = srv.client()
    c.ehlo()
    assert c.mail("s@example.org")[0] == 250
    assert c.rcpt("a@example.net")[0] == 250
    srv.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    while True:
        try:
            probe = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
        except ConnectionRefusedError:
            break
        probe.close()
        assert time.monotonic() - signalled < 1.0, "the port still accepts connections after SIGTERM"
        time.sleep(0.02)
    assert time.monotonic() - signalled < 1.0
    assert c.data(HAM)[0] == 250  # the one in flight completes
    c.quit()
    assert srv.proc.wait(20) == 0
    assert len(sink.received) == 2
    assert "stopped" in srv.log_text()


def test_sessions_in_flight_get_relay_timeout_then_are_dropped(served, sink):
    srv = served(DEFAULT_MODEL, "[proxy]\nrelay_timeout = 1.5\n")
    c = srv.client()
    c.ehlo()
    assert c.mail("s@example.org")[0] == 250
    srv.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert srv.proc.wait(20) == 0
    assert 1.4 < time.monotonic() - signalled < 8
    assert "still open after 1.5 s" in srv.log_text()
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        c.rcpt("a@example.net")
    assert sink.received == []


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


def _send(srv, n: int, tag: str) -> list[bytes]:
    sent = []
    for i in range(n):
        msg = HAM.replace(b"Subject: lunch", f"Subject: {tag} {i}".encode())
        with srv.client() as c:
            c.sendmail("s@example.org", ["a@example.net"], msg)
        sent.append(msg)
    return sent


def test_a_killed_worker_and_a_corrupt_model_on_disk_leave_every_message_scored_once(
    served, sink, tmp_path, split_model
):
    """The bar of issue 10: SIGKILL a scoring worker, then swap a corrupt
    model in on disk (after a reload, and again before the next message):
    every later message is scored and delivered exactly once."""
    model = tmp_path / "model.npz"
    shutil.copy(DEFAULT_MODEL, model)
    srv = served(model)
    sent = _send(srv, 1, "warm-up")
    [worker] = srv.wait_for_workers()
    os.kill(worker, signal.SIGKILL)
    sent += _send(srv, 3, "after-kill")

    # a new good model, reloaded; then a corrupt file replaces it before any message
    tmp = tmp_path / "new.npz"
    shutil.copy(split_model[0], tmp)
    os.replace(tmp, model)
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log("reloaded: model", 20)
    model.write_bytes(b"PK\x03\x04 corrupt")
    srv.wait_for_log("reload refused", 20)
    sent += _send(srv, 1, "after-reload")  # the new pool's worker is up
    [worker] = srv.wait_for_workers()
    os.kill(worker, signal.SIGKILL)  # its replacement must not read the file
    sent += _send(srv, 10, "after-corrupt")

    delivered = [content for _, _, content in sink.received]
    for msg in sent:
        assert sum(d.endswith(msg) for d in delivered) == 1
    unscanned = [d for d in delivered if b"X-Spam-Status: Unknown" in d]
    assert len(unscanned) <= 1
    assert all(b"X-Spam-Status: No, score=" in d for d in delivered[-10:])
    srv.stop()
    log = srv.log_text()
    assert log.count("was killed by SIGKILL") == 2, log
    assert "stopped: 15 messages, 15 relayed, 0 tempfailed, 0 unscanned; scoring workers: 2 died" in log


def _message_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "outcome" in line]


def test_one_log_line_per_message_and_one_per_failure(served, sink):
    srv = served(DEFAULT_MODEL)
    _send(srv, 10, "quiet")
    with srv.client() as c:  # protocol noise is not logged
        c.docmd("FROBNICATE")
        c.docmd("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=")
    sink.controller.stop()  # the next hop goes down: one line
    with srv.client() as c:
        c.ehlo()
        assert c.mail("s@example.org")[0] == 451
    time.sleep(0.3)
    lines = srv.log_text().splitlines()
    assert len(_message_lines(srv.log_text())) == 10
    down = [line for line in lines if "next hop" in line and "unavailable" in line]
    assert len(down) == 1
    assert len(lines) == 1 + 10 + 1, "\n".join(lines)  # "listening on" + messages + the failure


def test_json_log_format_is_pure_json(served, sink):
    srv = served(DEFAULT_MODEL, args=("--log-format", "json"))
    _send(srv, 3, "json")
    sink.controller.stop()
    with srv.client() as c:
        c.ehlo()
        c.mail("s@example.org")
    srv.stop()
    records = [json.loads(line) for line in srv.log_text().splitlines()]  # every line parses
    assert all(isinstance(r, dict) for r in records)
    messages = [r for r in records if r.get("event") == "message"]
    assert len(messages) == 3 and all(r["outcome"] == "relay" and r["score"] is not None for r in messages)
    assert [r["event"] for r in records if r.get("event") == "next_hop_down"] == ["next_hop_down"]
    assert any("listening on" in r.get("msg", "") for r in records)
    assert any(r.get("msg", "").startswith("stopped: 3 messages, 3 relayed") for r in records)


def test_a_listen_address_beyond_loopback_stops_serve_with_a_clear_error(tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    env.pop("MAILSIFT_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "serve", "--listen", "0.0.0.0:10999"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 78  # EX_CONFIG
    assert "not a loopback address" in out.stderr and "--allow-non-loopback" in out.stderr


def _serve_fails(tmp_path, *args: str, config: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "d")}
    env.pop("MAILSIFT_CONFIG", None)
    if config:
        (tmp_path / "cfg" / "mailsift").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cfg" / "mailsift" / "config.toml").write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "serve", "--workers", "1", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def _only_json(stderr: str) -> list[dict]:
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    return [json.loads(line) for line in lines]  # a plain-text line fails here


def test_fatal_start_up_errors_are_written_in_the_json_log_format(tmp_path):
    """A log shipper parsing JSON must get the error that stops serve too:
    a port in use, a missing model, a bad config value, a public address,
    whether JSON was asked for on the command line or in the config."""
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        out = _serve_fails(tmp_path, "--log-format", "json", "--listen", f"127.0.0.1:{port}")
    finally:
        taken.close()
    assert out.returncode == 69, out.stderr  # EX_UNAVAILABLE
    fatal = [r for r in _only_json(out.stderr) if r.get("event") == "fatal"]
    assert len(fatal) == 1 and f"cannot listen on 127.0.0.1:{port}" in fatal[0]["msg"]
    assert fatal[0]["level"] == "critical" and fatal[0]["exit_status"] == 69

    out = _serve_fails(tmp_path, "--log-format", "json", "--model", str(tmp_path / "missing.npz"))
    assert out.returncode == 66, out.stderr  # EX_NOINPUT
    [fatal] = _only_json(out.stderr)
    assert "model file not found" in fatal["msg"]

    out = _serve_fails(tmp_path, config='[proxy]\nlog_format = "json"\nmode = "sideways"\n')
    assert out.returncode == 78, out.stderr  # EX_CONFIG
    [fatal] = _only_json(out.stderr)
    assert "proxy.mode" in fatal["msg"] and fatal["event"] == "fatal"
    (tmp_path / "cfg" / "mailsift" / "config.toml").unlink()

    out = _serve_fails(tmp_path, "--log-format", "json", "--listen", "0.0.0.0:10999")
    assert out.returncode == 78
    [fatal] = _only_json(out.stderr)
    assert "not a loopback address" in fatal["msg"]


def test_fatal_start_up_errors_in_text_mode_are_one_log_line(tmp_path):
    out = _serve_fails(tmp_path, "--model", str(tmp_path / "missing.npz"))
    assert out.returncode == 66
    [line] = out.stderr.splitlines()
    assert "mailsift[" in line and "model file not found" in line
