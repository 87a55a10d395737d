"""End to end with a real Postfix (Debian's package, installed by .ci/run)
calling the milter door: ``smtpd_milters = inet:127.0.0.1:PORT`` with
``milter_default_action = tempfail`` and ``milter_protocol = 6`` (the
README's lines), delivering into a Maildir.

Postfix runs as its own instance (``postfix -c DIR`` with its own queue
and data folders in a temporary folder, on loopback test ports), so this
never touches /etc/postfix nor a Postfix another test runs.  The milter runs
as a separate process (``mailsift serve --milter``, the README's command) so
that it can be killed for real.  Needs root.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port
from test_postfix import MAIN_CF, POSTFIX, SERVICES_CF, _corpus, _delivered, _port_open, _tag

pytestmark = pytest.mark.skipif(
    (POSTFIX is None or os.geteuid() != 0) and not os.environ.get("CI"),
    reason="needs Debian's postfix and root (CI installs it: see .ci/run)",
)

#: the README's main.cf lines for the milter, on a test port
MILTER_CF = """\
smtpd_milters = inet:127.0.0.1:{port_milter}
milter_default_action = tempfail
milter_protocol = 6
"""

SMTPD_CF = "127.0.0.1:{port_in} inet n - n - - smtpd\n"

DEFAULT_MODEL = ROOT / "engine" / "mailsift" / "data" / "default-model.npz"


class Instance:
    """A private Postfix instance in ``base``: config, queue, data, Maildir, log."""

    def __init__(self, base: Path, port_in: int, port_milter: int):
        self.base, self.port_in, self.port_milter = base, port_in, port_milter
        self.etc, self.log, self.maildir = base / "etc", base / "maillog", base / "mail" / "box"
        for d in ("etc", "queue", "data", "mail"):
            (base / d).mkdir()
        shutil.chown(base / "data", "postfix")
        shutil.chown(base / "mail", 65534, 65534)
        main = MAIN_CF.format(base=base / "mail", log=self.log)
        main = main.replace("/var/spool/postfix", str(base / "queue")).replace(
            "/var/lib/postfix", str(base / "data")
        )
        main += f"maillog_file_prefixes = {base}\n" + MILTER_CF.format(port_milter=port_milter)
        (self.etc / "main.cf").write_text(main)
        (self.etc / "master.cf").write_text(SMTPD_CF.format(port_in=port_in) + SERVICES_CF)

    def postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [POSTFIX or "postfix", "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60
        )

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else "(no log)"


def _wait(cond, seconds: float, what: str, instance: Instance) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; postfix log tail:\n{instance.tail()}")


@pytest.fixture
def postfix_milter():
    assert POSTFIX, "postfix is not installed"
    base = Path(tempfile.mkdtemp(prefix="mailsift-milter-postfix-"))
    os.chmod(base, 0o755)
    pf = Instance(base, free_port(), free_port())
    check = pf.postfix("check")
    assert check.returncode == 0, check.stdout + check.stderr + pf.tail()
    started = pf.postfix("start")
    assert started.returncode == 0, started.stdout + started.stderr + pf.tail()
    try:
        _wait(lambda: _port_open(pf.port_in), 20, "postfix smtpd to listen", pf)
        yield pf
    finally:
        pf.postfix("stop")
        shutil.rmtree(base, ignore_errors=True)


class MilterProcess:
    """``mailsift serve --milter`` on the instance's milter port."""

    def __init__(self, pf: Instance, reject: float = 6.0):
        self.pf = pf
        self.config = pf.base / "mailsift.toml"
        # reject = 6: the shipped default model alone reaches it on the test spam
        self.config.write_text(f'[thresholds]\nreject = {reject}\n\n[milter]\non_error = "tempfail"\n')
        self.stderr = pf.base / "milter.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "XDG_DATA_HOME": str(self.pf.base / "xdg")}
        cmd = [sys.executable, "-m", "mailsift.cli", "--config", str(self.config), "serve"]
        cmd += ["--milter", f"127.0.0.1:{self.pf.port_milter}"]
        cmd += ["--model", str(DEFAULT_MODEL), "--workers", "1"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.stderr.open("a"))
        _wait(
            lambda: _port_open(self.pf.port_milter) or self.proc.poll() is not None, 60, "the milter", self.pf
        )
        assert self.proc.poll() is None, self.stderr.read_text()

    def kill(self) -> None:
        """SIGKILL, as the OOM killer would: no goodbye to Postfix."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def milter(postfix_milter):
    m = MilterProcess(postfix_milter)
    m.start()
    yield m
    m.stop()


def _send(port: int, test_id: str, raw: bytes, replies: dict | None = None) -> int:
    """One message on its own SMTP connection: 250, or the refusal's code
    (a dropped connection counts as 421, which a sender retries); the
    refusal's text goes into ``replies``."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
            c.sendmail("sender@outside.example", [f"user+{test_id}@test.example"], _tag(raw, test_id))
        return 250
    except smtplib.SMTPRecipientsRefused as err:
        code, text = next(iter(err.recipients.values()))
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError, smtplib.SMTPConnectError) as err:
        code, text = err.smtp_code, err.smtp_error
    except (smtplib.SMTPServerDisconnected, ConnectionError) as err:
        code, text = 421, str(err).encode()
    if replies is not None:
        replies[test_id] = text.decode(errors="replace")
    return code


def test_postfix_milter_marks_ham_and_refuses_spam_at_data(postfix_milter, milter, sa_test):
    msgs, spam_ids = _corpus(sa_test, 5, 5, "m")
    replies: dict[str, str] = {}
    codes = {test_id: _send(postfix_milter.port_in, test_id, raw, replies) for test_id, raw in msgs.items()}
    ham_ids = set(msgs) - spam_ids
    assert codes == {t: 550 if t in spam_ids else 250 for t in msgs}, (
        codes,
        milter.stderr.read_text()[-2000:],
    )
    assert sorted(replies) == sorted(spam_ids)
    assert all(text.startswith("5.7.1 message rejected as spam (score ") for text in replies.values()), (
        replies
    )
    _wait(lambda: len(_delivered(postfix_milter.maildir)) == len(ham_ids), 60, "the ham", postfix_milter)
    time.sleep(1)  # a duplicate would show up now
    delivered = _delivered(postfix_milter.maildir)
    assert sorted(delivered) == sorted(ham_ids)
    for test_id, copies in delivered.items():
        assert len(copies) == 1, test_id
        assert b"\nX-Spam-Status: No, score=" in copies[0], test_id
        assert b"X-Mailsift-Report: " in copies[0]
    log = postfix_milter.log.read_text()
    assert log.count("milter-reject: END-OF-MESSAGE") == len(spam_ids)
    # the service: one line per message, none for the protocol around it
    lines = milter.stderr.read_text().splitlines()
    assert len([line for line in lines if " milter client=" in line]) == len(msgs), lines
    assert all(" milter client=" in line or "listening on" in line or ": model " in line for line in lines), (
        lines
    )
    assert log.count(": 5.7.1 message rejected as spam (score ") == len(spam_ids)


def test_postfix_milter_strips_forged_spam_headers(postfix_milter, milter, sa_test):
    forged = (
        b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-100\r\nX-Spam-Status: No, again\r\n"
        b"x-spam-flag: no\r\nX-Spam-Report: planted-report\r\nX-Spam-Checker-Version: planted 9\r\n"
    )  # mixed case: Postfix counts the index of a name case-insensitively, as the door does
    ham = next(i for i in sa_test if not i.spam).read()
    assert _send(postfix_milter.port_in, "forged", forged + ham) == 250
    _wait(lambda: "forged" in _delivered(postfix_milter.maildir), 60, "the message", postfix_milter)
    (raw,) = _delivered(postfix_milter.maildir)["forged"]
    head = raw.split(b"\n\n", 1)[0]
    assert b"score=-100" not in head and b"again" not in head and b"planted" not in head
    assert b"X-Spam-Flag: NO" not in head.upper().replace(b"X-SPAM-FLAG: NO", b"X-Spam-Flag: NO")
    assert head.count(b"X-Spam-Status:") == 1


def test_postfix_milter_killed_mid_stream_loses_nothing(postfix_milter, milter, sa_test):
    """Senders keep sending while the milter is SIGKILLed and restarted:
    each message is either accepted (and arrives once) or refused 4xx and
    sent again later (and then arrives once)."""
    msgs, _ = _corpus(sa_test, 24, 0, "k")
    pending = list(msgs)
    accepted: list[str] = []
    tempfailed: dict[str, int] = {}
    other: dict[str, int] = {}
    done = threading.Event()

    def sender():
        attempts = 0
        while pending and attempts < 300:  # bounded
            attempts += 1
            test_id = pending.pop(0)
            code = _send(postfix_milter.port_in, test_id, msgs[test_id])
            if code == 250:
                accepted.append(test_id)
            elif 400 <= code < 500:
                tempfailed[test_id] = tempfailed.get(test_id, 0) + 1
                pending.append(test_id)  # the sender's queue retries it
                time.sleep(0.1)
            else:
                other[test_id] = code
        done.set()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    _wait(lambda: len(accepted) >= 6, 120, "the first messages through the milter", postfix_milter)
    milter.kill()  # mid-stream: the sender is still going
    _wait(
        lambda: sum(tempfailed.values()) >= 3,
        60,
        "postfix to tempfail while the milter is down",
        postfix_milter,
    )
    milter.start()  # back on the same port
    assert done.wait(240), f"sender did not finish: pending={pending}"
    thread.join(10)
    assert not other, other
    assert sorted(accepted) == sorted(msgs)  # each accepted exactly once
    _wait(lambda: len(_delivered(postfix_milter.maildir)) == len(msgs), 60, "every message", postfix_milter)
    time.sleep(1)
    delivered = _delivered(postfix_milter.maildir)
    assert sorted(delivered) == sorted(msgs)
    assert all(len(copies) == 1 for copies in delivered.values())
    assert all(b"X-Spam-Status: No, score=" in copies[0] for copies in delivered.values())  # none unscanned
    assert sum(tempfailed.values()) >= 3  # the kill really happened while mail was coming in
