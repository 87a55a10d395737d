"""End to end with a real Postfix (Debian's package, installed by .ci/run):
Postfix on loopback hands mail to `mailsift serve` as an after-queue
content filter, gets it back on a re-injection port, and delivers it into a
Maildir.  This writes /etc/postfix/{main,master}.cf (a throwaway CI machine;
the originals are restored afterwards) and needs root.
"""

from __future__ import annotations

import email
import os
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ProxyThread, free_port

from mailsift.config import Config


def _bin(name: str) -> str | None:
    """Postfix's commands live in /usr/sbin, which a non-login PATH may lack."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)


POSTFIX = _bin("postfix")
LOG = Path("/var/log/mailsift-postfix-test.log")

pytestmark = pytest.mark.skipif(
    (POSTFIX is None or os.geteuid() != 0) and not os.environ.get("CI"),
    reason="needs Debian's postfix and root (CI installs it: see .ci/run)",
)

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = /var/spool/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
data_directory = /var/lib/postfix
mail_owner = postfix
myhostname = mx.test.example
mydomain = test.example
myorigin = $myhostname
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
virtual_mailbox_domains = test.example
virtual_mailbox_base = {base}
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
maillog_file = {log}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtputf8_enable = yes
message_size_limit = 52428800
virtual_mailbox_limit = 0
biff = no
"""

#: the README's after-queue lines (content_filter), on test ports
AFTER_QUEUE_CF = """\
127.0.0.1:{port_in} inet n - n - - smtpd
  -o content_filter=mailsift:[127.0.0.1]:{port_filter}
mailsift unix - - n - 4 smtp
  -o smtp_send_xforward_command=yes
  -o disable_mime_output_conversion=yes
  -o smtp_connect_timeout=2s
127.0.0.1:{port_back} inet n - n - - smtpd
  -o content_filter=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o mynetworks=127.0.0.0/8
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
"""

#: the README's before-queue lines (smtpd_proxy_filter), on test ports
BEFORE_QUEUE_CF = """\
127.0.0.1:{port_in} inet n - n - 20 smtpd
  -o smtpd_proxy_filter=127.0.0.1:{port_filter}
127.0.0.1:{port_back} inet n - n - - smtpd
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o mynetworks=127.0.0.0/8
  -o receive_override_options=no_unknown_recipient_checks
"""

SERVICES_CF = """\
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 1 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def _postfix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([POSTFIX or "postfix", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["after-queue"])
def postfix(request):
    """A running Postfix whose content filter is 127.0.0.1:<port_filter>
    (parametrize indirectly with "before-queue" for smtpd_proxy_filter)."""
    assert POSTFIX, "postfix is not installed"
    etc = Path("/etc/postfix")
    saved = {n: (etc / n).read_bytes() for n in ("main.cf", "master.cf") if (etc / n).exists()}
    base = Path(tempfile.mkdtemp(prefix="mailsift-postfix-"))
    os.chmod(base, 0o755)
    ports = {"port_in": free_port(), "port_filter": free_port(), "port_back": free_port()}
    (etc / "main.cf").write_text(MAIN_CF.format(base=base, log=LOG))
    filter_cf = AFTER_QUEUE_CF if request.param == "after-queue" else BEFORE_QUEUE_CF
    (etc / "master.cf").write_text(filter_cf.format(**ports) + SERVICES_CF)
    shutil.chown(base, 65534, 65534)
    _postfix("stop")
    check = _postfix("check")
    assert check.returncode == 0, check.stderr
    started = _postfix("start")
    assert started.returncode == 0, started.stderr + (LOG.read_text() if LOG.exists() else "")
    _wait(lambda: _port_open(ports["port_in"]), 20, "postfix smtpd to listen")
    try:
        yield {**ports, "maildir": base / "box"}
    finally:
        _postfix("stop")
        subprocess.run([_bin("postsuper") or "postsuper", "-d", "ALL"], capture_output=True)
        for n, data in saved.items():
            (etc / n).write_bytes(data)
        shutil.rmtree(base, ignore_errors=True)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(cond, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    log = LOG.read_text()[-3000:] if LOG.exists() else "(no log)"
    raise AssertionError(f"timed out waiting for {what}; postfix log tail:\n{log}")


def _filter(ports, mode: str = "after-queue") -> ProxyThread:
    from dataclasses import replace

    config = Config()
    config.proxy = replace(
        config.proxy,
        listen=f"127.0.0.1:{ports['port_filter']}",
        relay=f"127.0.0.1:{ports['port_back']}",
        mode=mode,
    )
    config.thresholds.reject = 6.0  # so the default model alone can reach it
    return ProxyThread(config)


def _delivered(maildir: Path) -> dict[str, list[bytes]]:
    """X-Test-Id -> the delivered copies."""
    out: dict[str, list[bytes]] = {}
    new = maildir / "new"
    if not new.is_dir():
        return out
    for f in new.iterdir():
        raw = f.read_bytes()
        test_id = email.message_from_bytes(raw)["X-Test-Id"]
        out.setdefault(str(test_id), []).append(raw)
    return out


def _submit(port: int, messages: dict[str, bytes]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        for test_id, raw in messages.items():
            c.sendmail("sender@outside.example", [f"user+{test_id}@test.example"], _tag(raw, test_id))


def _tag(raw: bytes, test_id: str) -> bytes:
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1]
    return f"X-Test-Id: {test_id}\r\n".encode() + raw


def _corpus(items, n_ham: int, n_spam: int, prefix: str) -> tuple[dict[str, bytes], set[str]]:
    ham = [i for i in items if not i.spam][:n_ham]
    spam = [i for i in items if i.spam][:n_spam]
    msgs = {f"{prefix}{k}": it.read() for k, it in enumerate(ham + spam)}
    return msgs, {f"{prefix}{k}" for k in range(len(ham), len(ham) + len(spam))}


def test_postfix_content_filter_delivers_every_message_once_with_headers(postfix, sa_test):
    proxy = _filter(postfix)
    try:
        msgs, spam_ids = _corpus(sa_test, 10, 10, "a")
        _submit(postfix["port_in"], msgs)
        _wait(lambda: len(_delivered(postfix["maildir"])) == len(msgs), 60, "all messages in the Maildir")
        time.sleep(1)  # a duplicate would show up now
    finally:
        proxy.stop()
    delivered = _delivered(postfix["maildir"])
    assert sorted(delivered) == sorted(msgs)
    assert all(len(copies) == 1 for copies in delivered.values())
    for test_id, (raw,) in delivered.items():
        parsed = email.message_from_bytes(raw)
        assert parsed["X-Spam-Status"], test_id
        assert (parsed["X-Spam-Flag"] == "YES") == (test_id in spam_ids), (test_id, parsed["X-Spam-Status"])
    log = LOG.read_text()
    assert f"relay=127.0.0.1[127.0.0.1]:{postfix['port_filter']}" in log


def test_postfix_defers_while_the_filter_is_down_and_delivers_once_after(postfix, sa_test):
    msgs, _ = _corpus(sa_test, 5, 5, "b")
    first = dict(list(msgs.items())[:4])
    rest = dict(list(msgs.items())[4:])
    proxy = _filter(postfix)
    _submit(postfix["port_in"], first)
    _wait(lambda: len(_delivered(postfix["maildir"])) == len(first), 60, "the first messages")
    proxy.stop()  # the filter goes away mid-run
    _submit(postfix["port_in"], rest)  # Postfix accepts and queues them

    def deferred() -> bool:
        postqueue = _bin("postqueue") or "postqueue"
        queue = subprocess.run([postqueue, "-p"], capture_output=True, text=True).stdout
        return queue.count("Connection refused") >= len(rest)

    _wait(deferred, 30, "postfix to defer the mail the filter cannot take")
    assert len(_delivered(postfix["maildir"])) == len(first)  # nothing passed unfiltered
    proxy = _filter(postfix)  # back on the same port
    try:
        subprocess.run([_bin("postqueue") or "postqueue", "-f"], capture_output=True)
        _wait(lambda: len(_delivered(postfix["maildir"])) == len(msgs), 60, "the queue to flush")
        time.sleep(1)
    finally:
        proxy.stop()
    delivered = _delivered(postfix["maildir"])
    assert sorted(delivered) == sorted(msgs)
    assert all(len(copies) == 1 for copies in delivered.values())
    assert all(b"X-Spam-Status:" in copies[0] for copies in delivered.values())


@pytest.mark.parametrize("postfix", ["before-queue"], indirect=True)
def test_postfix_before_queue_refuses_spam_while_the_sender_waits(postfix, sa_test):
    proxy = _filter(postfix, mode="before-queue")
    try:
        msgs, spam_ids = _corpus(sa_test, 5, 5, "c")
        refused = {}
        with smtplib.SMTP("127.0.0.1", postfix["port_in"], timeout=30) as c:
            for test_id, raw in msgs.items():
                try:
                    c.sendmail("sender@outside.example", ["user@test.example"], _tag(raw, test_id))
                except smtplib.SMTPDataError as err:
                    refused[test_id] = err.smtp_code
        ham_ids = set(msgs) - spam_ids
        _wait(lambda: len(_delivered(postfix["maildir"])) == len(ham_ids), 60, "the ham in the Maildir")
        time.sleep(1)
    finally:
        proxy.stop()
    assert refused == {test_id: 550 for test_id in spam_ids}
    delivered = _delivered(postfix["maildir"])
    assert sorted(delivered) == sorted(ham_ids)
    assert all(len(c) == 1 and b"X-Spam-Status: No" in c[0] for c in delivered.values())
