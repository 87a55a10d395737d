"""End to end with a real Dovecot (Debian's dovecot-imapd and dovecot-sieve,
installed by .ci/run) running contrib/dovecot/: a user moves messages over
real IMAP (imaplib) and the model's ledger shows what was learned.

The test writes its own dovecot.conf in a temporary folder (loopback IMAP
port, a passwd-file user whose mail is a Maildir owned by ``nobody``) that
includes contrib/dovecot/90-mailsift-imapsieve.conf with three names
replaced: the install folder, the account that owns the model (the test's
own, which runs Python) and the mail account.  Needs root (Dovecot switches
to the mail user).
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, free_port

from mailsift.model import LinearModel
from mailsift.train import message_digest

CONTRIB = ROOT / "contrib" / "dovecot"
DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None)
SIEVEC = shutil.which("sievec")
MAIL_USER = "nobody"

pytestmark = pytest.mark.skipif(
    (DOVECOT is None or SIEVEC is None or os.geteuid() != 0) and not os.environ.get("CI"),
    reason="needs Debian's dovecot-imapd and dovecot-sieve, and root (CI installs them: see .ci/run)",
)

DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {base}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
namespace inbox {{
  inbox = yes
  mailbox Junk {{
    auto = create
    special_use = \\Junk
  }}
  mailbox Trash {{
    auto = create
    special_use = \\Trash
  }}
  mailbox Archive {{
    auto = create
  }}
}}
!include {base}/conf.d/90-mailsift-imapsieve.conf
"""


class Dovecot:
    def __init__(self, base: Path, port: int, model: Path):
        self.base, self.port, self.model = base, port, model
        #: the running service's /metrics, when clicks go through one
        self.metrics_url = ""
        self.conf = base / "dovecot.conf"
        self.log = base / "dovecot.log"

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else "(no log)"

    def imap(self) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        c.login("alice", "secret")
        return c

    def ledger(self) -> dict[bytes, tuple[int, float]]:
        return LinearModel.load(self.model).ledger.digests


def _install(base: Path, port: int) -> Path:
    """contrib/dovecot/ into base/sieve-mailsift and base/conf.d, as the
    README says to install it into /etc/dovecot/; returns the config file."""
    learner = pwd.getpwuid(os.geteuid()).pw_name
    home = base / "home"
    home.mkdir()
    mail = pwd.getpwnam(MAIL_USER)
    shutil.chown(home, mail.pw_uid, mail.pw_gid)
    (base / "users").write_text(f"alice:{{PLAIN}}secret:{mail.pw_uid}:{mail.pw_gid}::{home}::\n")
    for d in ("run", "state", "conf.d"):
        (base / d).mkdir()
    scripts = base / "sieve-mailsift"
    scripts.mkdir()
    for name in ("report-spam.sieve", "report-ham.sieve", "mailsift-learn.sh"):
        shutil.copy2(CONTRIB / name, scripts / name)
    snippet = (CONTRIB / "90-mailsift-imapsieve.conf").read_text()
    for old, new in (
        ("/etc/dovecot/sieve-mailsift", str(scripts)),
        ("user = mailsift", f"user = {learner}"),
        ("user = vmail", f"user = {MAIL_USER}"),
    ):
        assert old in snippet, old
        snippet = snippet.replace(old, new)
    (base / "conf.d" / "90-mailsift-imapsieve.conf").write_text(snippet)
    conf = base / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(base=base, port=port))
    # the settings file the script sources: this test's Python, code and model
    env = (CONTRIB / "mailsift-learn.env").read_text()
    env = env.replace("MAILSIFT=/usr/local/bin/mailsift", f"MAILSIFT='{sys.executable} -m mailsift.cli'")
    env = env.replace(
        "MAILSIFT_CONFIG=/etc/mailsift/config.toml", f"MAILSIFT_CONFIG={base / 'mailsift.toml'}"
    )
    pythonpath = os.environ.get("PYTHONPATH", "")
    env += f"PYTHONPATH='{pythonpath}'\nexport PYTHONPATH\n" if pythonpath else ""
    (scripts / "mailsift-learn.env").write_text(env)
    for name in ("report-spam.sieve", "report-ham.sieve"):
        compiled = subprocess.run(
            [SIEVEC or "sievec", "-c", str(conf), str(scripts / name)], capture_output=True, text=True
        )
        assert compiled.returncode == 0, compiled.stderr
    return conf


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, small_indexes):
    """A small model of the user's own (so `learn` accepts it), trained with the CLI."""
    path = tmp_path_factory.mktemp("dovecot-model") / "model.npz"
    train, _ = small_indexes
    done = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "train", "--index", str(train), "--model", str(path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(params=["into-the-file", "through-the-service"])
def dovecot(request, trained_model):
    """Dovecot with the recipe; ``mailsift learn`` either writes the model
    file (no service configured) or, with ``[serve] http`` in the config and
    ``mailsift serve`` running, hands each click to the service."""
    assert DOVECOT and SIEVEC, "dovecot-imapd and dovecot-sieve are not installed"
    base = Path(tempfile.mkdtemp(prefix="mailsift-dovecot-"))
    os.chmod(base, 0o755)
    model = base / "model" / "model.npz"
    model.parent.mkdir()
    shutil.copy2(trained_model, model)
    config = f'[model]\npath = "{model}"\n'
    service = None
    if request.param == "through-the-service":
        http = free_port()
        config += f'\n[serve]\nhttp = "127.0.0.1:{http}"\n'
    (base / "mailsift.toml").write_text(config)
    port = free_port()
    conf = _install(base, port)
    dv = Dovecot(base, port, model)
    if request.param == "through-the-service":
        env = {**os.environ, "XDG_DATA_HOME": str(base / "xdg")}
        with (base / "serve.log").open("w") as err:
            service = subprocess.Popen(
                [sys.executable, "-m", "mailsift.cli", "--config", str(base / "mailsift.toml"), "serve",
                 "--workers", "1"],
                stdout=subprocess.DEVNULL, stderr=err, env=env,
            )  # fmt: skip
        _wait(lambda: _port_open(http) or service.poll() is not None, 60, "mailsift serve", dv)
        assert service.poll() is None, (base / "serve.log").read_text()
        dv.metrics_url = f"http://127.0.0.1:{http}/metrics"
    # the master daemonises and keeps the descriptors it was given: no pipes
    with (base / "start.err").open("w") as err:
        started = subprocess.run(
            [DOVECOT, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err, timeout=60
        )
    assert started.returncode == 0, (base / "start.err").read_text() + dv.tail()
    try:
        _wait(lambda: _port_open(port), 30, "dovecot to listen", dv)
        yield dv
    finally:
        subprocess.run(
            [DOVECOT, "-c", str(conf), "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        pid = base / "run" / "master.pid"
        for _ in range(50):  # bounded: wait for the master to go
            if not pid.exists():
                break
            time.sleep(0.1)
        if service is not None:
            service.terminate()
            service.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(cond, seconds: float, what: str, dv: Dovecot) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; dovecot log tail:\n{dv.tail()}")


def _append(c: imaplib.IMAP4, mailbox: str, raw: bytes) -> str:
    """APPEND; returns the new message's UID (UIDPLUS)."""
    typ, data = c.append(mailbox, None, None, raw)
    assert typ == "OK", data
    return data[0].decode().split("APPENDUID ")[1].split()[1].rstrip("]")


def _uid_cmd(c: imaplib.IMAP4, mailbox: str, cmd: str, uid: str, target: str) -> None:
    typ, data = c.select(mailbox)
    assert typ == "OK", data
    typ, data = c.uid(cmd, uid, target)
    assert typ == "OK", (cmd, data)


def _messages(sa_test) -> dict[str, bytes]:
    """Messages the model was not trained on, normalised to CRLF as IMAP wants."""
    ham = [i for i in sa_test if not i.spam][:4]
    spam = [i for i in sa_test if i.spam][:2]
    out = {}
    for name, item in zip(["ham1", "ham2", "ham3", "ham4", "spam1", "spam2"], ham + spam):
        raw = item.read()
        if raw.startswith(b"From "):
            raw = raw.split(b"\n", 1)[1]
        out[name] = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out


def test_dovecot_learns_junk_moves_as_spam_and_moves_out_of_junk_as_ham(dovecot, sa_test):
    msgs = _messages(sa_test)
    digest = {name: message_digest(raw) for name, raw in msgs.items()}
    before = dovecot.ledger()
    assert not any(d in before for d in digest.values())  # none of them learned yet

    def learned(name: str, label: int):
        return lambda: (entry := dovecot.ledger().get(digest[name])) is not None and entry[0] == label

    c = dovecot.imap()
    try:
        # INBOX -> Junk by MOVE, and by COPY: both learned as spam
        uid = _append(c, "INBOX", msgs["spam1"])
        _uid_cmd(c, "INBOX", "MOVE", uid, "Junk")
        _wait(learned("spam1", 1), 60, "spam1 learned as spam", dovecot)
        uid = _append(c, "INBOX", msgs["spam2"])
        _uid_cmd(c, "INBOX", "COPY", uid, "Junk")
        _wait(learned("spam2", 1), 60, "spam2 learned as spam", dovecot)

        # delivered into Junk (APPEND is the filter's doing, not the user's): nothing learned ...
        in_junk = {name: _append(c, "Junk", msgs[name]) for name in ("ham1", "ham2")}
        # ... Junk -> Trash: deleting spam is not calling it ham
        _uid_cmd(c, "Junk", "MOVE", in_junk["ham2"], "Trash")
        # ... INBOX -> Trash: nothing to do with Junk
        uid = _append(c, "INBOX", msgs["ham3"])
        _uid_cmd(c, "INBOX", "MOVE", uid, "Trash")
        # Junk -> INBOX: learned as ham
        _uid_cmd(c, "Junk", "MOVE", in_junk["ham1"], "INBOX")
        _wait(learned("ham1", 0), 60, "ham1 learned as ham", dovecot)

        # a spam verdict taken back: Junk -> Archive relabels it as ham
        spam1_uid = _find(c, "Junk", msgs["spam1"])
        _uid_cmd(c, "Junk", "MOVE", spam1_uid, "Archive")
        _wait(learned("spam1", 0), 60, "spam1 relabelled as ham", dovecot)

        # the Junk folder and the others hold what the user put there
        assert _count(c, "Trash") == 2 and _count(c, "INBOX") == 2 and _count(c, "Archive") == 1
    finally:
        c.logout()

    ledger = dovecot.ledger()
    assert digest["ham2"] not in ledger and digest["ham3"] not in ledger and digest["ham4"] not in ledger
    assert ledger[digest["spam2"]][0] == 1 and ledger[digest["ham1"]][0] == 0
    assert len(ledger) == len(before) + 3  # exactly spam1 (relabelled), spam2, ham1 were added
    log = dovecot.log.read_text()
    assert "Error" not in log.replace("error=", ""), log[-3000:]
    if dovecot.metrics_url:  # every click went through the service's learner
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(dovecot.metrics_url, timeout=30).read().decode()
        learns = {
            (s.labels["class"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "mailsift_learn_total"
        }
        assert learns == {("spam", "learned"): 2.0, ("ham", "learned"): 1.0, ("ham", "relabelled"): 1.0}


def _count(c: imaplib.IMAP4, mailbox: str) -> int:
    typ, data = c.select(mailbox, readonly=True)
    assert typ == "OK"
    return int(data[0])


def _find(c: imaplib.IMAP4, mailbox: str, raw: bytes) -> str:
    """The UID of the message in ``mailbox`` whose Subject is raw's."""
    subject = next(line for line in raw.split(b"\r\n") if line.lower().startswith(b"subject:"))
    c.select(mailbox)
    typ, data = c.uid("SEARCH", None, "ALL")
    assert typ == "OK"
    for uid in data[0].split():
        typ, fetched = c.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if fetched[0][1].strip() == subject.strip():
            return uid.decode()
    raise AssertionError(f"{subject!r} not in {mailbox}")


def test_dovecot_pipe_refuses_an_unknown_class(tmp_path):
    done = subprocess.run(
        ["sh", str(CONTRIB / "mailsift-learn.sh"), "maybe"], input=b"x", capture_output=True, timeout=30
    )
    assert done.returncode == 64 and b"class must be spam or ham" in done.stderr


def test_dovecot_pipe_with_learn_user_teaches_only_that_imap_users_model(tmp_path, small_model, sa_test):
    """MAILSIFT_LEARN_USER=yes: a Junk click teaches the IMAP user's own model,
    never the site model or another user's (run as Dovecot runs the script:
    class and imap.user as arguments, settings from the .env beside it)."""
    import json

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy(CONTRIB / "mailsift-learn.sh", scripts)
    model = tmp_path / "model.npz"  # a copy: a broken script must not teach the session's model
    shutil.copy(small_model, model)
    config = tmp_path / "mailsift.toml"
    config.write_text(f'[model]\npath = "{model}"\n[store]\npath = "{tmp_path}/users"\n')
    env = (CONTRIB / "mailsift-learn.env").read_text()
    env = env.replace("MAILSIFT=/usr/local/bin/mailsift", f"MAILSIFT='{sys.executable} -m mailsift.cli'")
    env = env.replace("MAILSIFT_CONFIG=/etc/mailsift/config.toml", f"MAILSIFT_CONFIG='{config}'")
    env = env.replace("#MAILSIFT_LEARN_USER=yes", "MAILSIFT_LEARN_USER=yes")
    pythonpath = os.environ.get("PYTHONPATH", "")
    env += f"PYTHONPATH='{pythonpath}'\nexport PYTHONPATH\n" if pythonpath else ""
    (scripts / "mailsift-learn.env").write_text(env)
    raw = next(i for i in sa_test if not i.spam).read()
    model_bytes = model.read_bytes()

    def score(user: str | None) -> float:
        cmd = [sys.executable, "-m", "mailsift.cli", "--config", str(config), "score", "--json", "-"]
        cmd += ["--user", user] if user else []
        done = subprocess.run(cmd, input=raw, capture_output=True, timeout=120, check=True)
        return json.loads(done.stdout)["score"]

    before = {u: score(u) for u in (None, "alice", "bob")}
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}  # Dovecot's is empty
    done = subprocess.run(
        ["sh", str(scripts / "mailsift-learn.sh"), "spam", "alice"], input=raw, capture_output=True,
        timeout=120, env=clean,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"for alice" in done.stdout, done.stdout
    assert score("alice") > before["alice"] + 0.5
    assert score("bob") == before["bob"] and score(None) == before[None]
    assert model.read_bytes() == model_bytes  # the site model file was not taught
