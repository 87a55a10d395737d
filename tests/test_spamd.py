"""The spamd door against Debian's real ``spamc`` client, over loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailsift.model import LinearModel
from mailsift.train import message_digest

pytestmark = pytest.mark.skipif(
    shutil.which("spamc") is None and not os.environ.get("CI"),
    reason="spamc not installed (.ci/run installs it)",
)


def spamc(port: int, *args: str, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["spamc", "-d", "127.0.0.1", "-p", str(port), "-t", "60", *args],
        input=data, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def spamd(serving, trec_model, tmp_path):
    """A service with a spamd door over a copy of the trec model (learning writes it)."""
    model = tmp_path / "model.npz"
    shutil.copy(trec_model, model)
    srv = serving(model, ("spamd",))
    srv.model = model
    srv.port = srv.ports["spamd"]
    return srv


def test_spamc_check_exit_codes_right_on_the_trec_test_half(spamd, trec_test_sample):
    spam, ham = trec_test_sample
    right = {"spam": 0, "ham": 0}
    for label, paths in (("spam", spam), ("ham", ham)):
        for path in paths:
            out = spamc(spamd.port, "-c", data=path.read_bytes())
            score, _, threshold = out.stdout.decode().strip().partition("/")
            assert float(threshold) == 5.0, out  # score/threshold printed, as spamd does
            assert out.returncode in (0, 1)
            assert out.returncode == int(float(score) >= 5.0)
            right[label] += out.returncode == (label == "spam")
    assert right["spam"] >= 9 and right["ham"] >= 9, right


def test_plain_spamc_returns_the_whole_message_with_x_spam_status(spamd, trec_test_sample):
    raw = trec_test_sample[1][0].read_bytes()
    out = spamc(spamd.port, data=raw)
    assert out.returncode == 0
    head, _, body = out.stdout.partition(b"\n\n")
    assert b"X-Spam-Status: " in head
    assert out.stdout.endswith(raw.partition(b"\n\n")[2])  # the body untouched
    for line in raw.partition(b"\n\n")[0].splitlines():
        assert line in out.stdout  # every original header line kept


def test_plain_spamc_keeps_the_mbox_from_line_first(spamd, trec_test_sample):
    """procmail hands a filter (``:0fw | spamc``) the message with its mbox
    From_ line, as SpamAssassin's spamd keeps it: our headers go below it,
    or the mailbox gets a message whose header block starts with X-Spam-*
    and has a stray "From " line in it."""
    raw = trec_test_sample[1][0].read_bytes()
    from_line = raw.partition(b"\n")[0] + b"\n"
    assert from_line.startswith(b"From ")  # trec07p keeps the mbox separator
    for args in ((), ("--headers",)):
        out = spamc(spamd.port, *args, data=raw).stdout
        assert out.startswith(from_line) and out.count(b"\nFrom ") == raw.count(b"\nFrom "), args
        assert out[len(from_line) :].startswith(b"X-Spam-"), args


def test_spamc_headers_symbols_and_report(spamd, trec_test_sample):
    raw = trec_test_sample[0][0].read_bytes()
    headers = spamc(spamd.port, "--headers", data=raw)
    assert b"X-Spam-Status: " in headers.stdout
    assert headers.stdout.endswith(raw.partition(b"\n\n")[2])  # spamc put the body back
    symbols = spamc(spamd.port, "-y", data=raw).stdout.decode()
    assert "MAILSIFT_" in symbols
    report = spamc(spamd.port, "-R", data=raw).stdout.decode()
    first, *rest = report.splitlines()
    assert first.endswith("/5.0")
    assert any(line.startswith("total") for line in rest)
    ping = subprocess.run(["spamc", "-p", str(spamd.port), "-K"], capture_output=True, timeout=30)
    assert ping.returncode == 0 and b"SPAMD/1.5 0" in ping.stdout


def test_spamc_learn_says_learned_then_already_and_forget_alike(spamd, trec_test_sample):
    raw = trec_test_sample[1][1].read_bytes()
    said = [spamc(spamd.port, "-L", kind, data=raw).stdout.decode().strip() for kind in
            ("spam", "spam", "forget", "forget", "ham", "ham")]  # fmt: skip
    assert said == [
        "Message successfully un/learned",
        "Message was already un/learned",
        "Message successfully un/learned",
        "Message was already un/learned",
        "Message successfully un/learned",
        "Message was already un/learned",
    ]
    # the service wrote the model file: the message is in its ledger, as ham
    assert LinearModel.load(spamd.model).ledger.digests[message_digest(raw)][0] == 0


def test_eight_concurrent_spamc_learns_all_learned_then_all_already(spamd, trec_test_sample):
    raws = [p.read_bytes() for p in trec_test_sample[1][2:10]]
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda r: spamc(spamd.port, "-L", "spam", data=r), raws))
        again = list(pool.map(lambda r: spamc(spamd.port, "-L", "spam", data=r), raws))
    assert [o.stdout.decode().strip() for o in first] == ["Message successfully un/learned"] * 8
    assert [o.stdout.decode().strip() for o in again] == ["Message was already un/learned"] * 8
    ledger = LinearModel.load(spamd.model).ledger.digests
    assert all(ledger[message_digest(r)][0] == 1 for r in raws)  # none lost


def test_a_learned_message_scores_differently_at_once_without_a_reload(spamd, trec_test_sample):
    raw = trec_test_sample[1][0].read_bytes()
    before = float(spamc(spamd.port, "-c", data=raw).stdout.split(b"/")[0])
    assert spamc(spamd.port, "-L", "spam", data=raw).returncode == 0
    after = float(spamc(spamd.port, "-c", data=raw).stdout.split(b"/")[0])
    assert after > before  # the very next request, no SIGHUP, no wait for the file watch


def _spamd_raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _request(method: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"{method} SPAMC/1.5\r\n{head}Content-length: {len(body)}\r\n\r\n".encode() + body


def test_zlib_compressed_requests_score_like_plain_ones_and_user_is_accepted(spamd, trec_test_sample):
    raw = trec_test_sample[0][1].read_bytes()
    plain = _spamd_raw(spamd.port, _request("CHECK", raw, "User: alice"))
    packed = _spamd_raw(spamd.port, _request("CHECK", zlib.compress(raw), "User: alice", "Compress: zlib"))
    assert plain.startswith(b"SPAMD/1.1 0 EX_OK\r\n")
    assert b"Spam: " in plain and plain == packed
    assert "user=alice" in spamd.log_text()


def test_protocol_abuse_gets_an_error_answer_and_the_door_stays_up(spamd, trec_test_sample):
    raw = trec_test_sample[0][1].read_bytes()
    bomb = zlib.compress(b"x" * (60 * 1024 * 1024))  # inflates past max_message_size
    cases = {
        b"NONSENSE\r\n\r\n": b" 76 ",
        b"FROB SPAMC/1.5\r\nContent-length: 0\r\n\r\n": b" 76 ",
        b"CHECK SPAMC/1.5\r\nContent-length: x\r\n\r\n": b" 76 ",
        b"CHECK SPAMC/1.5\r\nContent-length: 999999999999\r\n\r\n": b" 98 ",
        b"CHECK SPAMC/1.5\r\nContent-length: 500\r\n\r\nshort": b" 76 ",
        _request("CHECK", bomb, "Compress: zlib"): b" 98 ",
        _request("CHECK", b"not zlib", "Compress: zlib"): b" 65 ",
        _request("TELL", raw, "Message-class: spam"): b" 76 ",
        _request("TELL", raw, "Set: local"): b" 76 ",
        b"CHECK SPAMC/1.5\r\n" + b"X" * 20000 + b"\r\n\r\n": b" 76 ",
    }
    for request, code in cases.items():
        answer = _spamd_raw(spamd.port, request)
        assert answer.startswith(b"SPAMD/1.1") and code in answer.split(b"\r\n")[0], (request[:40], answer)
    assert _spamd_raw(spamd.port, b"SKIP SPAMC/1.5\r\n\r\n") == b""
    assert b"Spam: " in _spamd_raw(spamd.port, _request("CHECK", raw))  # still serving
    assert spamd.proc.poll() is None


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def test_spamc_gets_the_whole_message_back_after_a_scoring_worker_is_killed(spamd, trec_test_sample):
    import os
    import signal

    raw = trec_test_sample[1][6].read_bytes()
    assert spamc(spamd.port, "-c", data=raw).returncode == 0  # the pool's worker has started
    for pid in _children(spamd.proc.pid):
        os.kill(pid, signal.SIGKILL)
    outs = [spamc(spamd.port, data=raw) for _ in range(3)]
    for out in outs:
        # scored by a new worker, or passed on unscanned: never lost, never cut
        assert out.returncode == 0 and out.stdout.endswith(raw.partition(b"\n\n")[2])
        assert out.stdout == raw or b"X-Spam-Status: " in out.stdout
    assert b"X-Spam-Status: " in outs[-1].stdout  # new workers are scoring again
    assert spamd.proc.poll() is None


def test_sighup_reloads_the_model_for_the_spamd_door(spamd, trec_test_sample):
    import signal

    from mailsift.filter import DEFAULT_MODEL

    raw = trec_test_sample[0][1].read_bytes()
    before = spamc(spamd.port, "-c", data=raw).stdout
    new = spamd.model.with_suffix(".new")
    shutil.copy(DEFAULT_MODEL, new)
    new.replace(spamd.model)
    spamd.proc.send_signal(signal.SIGHUP)
    import time

    deadline = time.monotonic() + 30
    while "reloaded: model" not in spamd.log_text():
        assert time.monotonic() < deadline, spamd.log_text()
        time.sleep(0.1)
    assert spamc(spamd.port, "-c", data=raw).stdout != before


def test_tell_from_beyond_loopback_is_refused_and_nothing_is_learned(scoring_service, trec_model, tmp_path):
    """spamc has no credentials: a TELL whose peer is not a loopback address
    (here the peer of a Unix socket pair: no address at all) gets
    EX_NOPERM, and the model is not touched; scoring is still answered."""
    from mailsift.serve.spamd import SpamdDoor

    model = tmp_path / "model.npz"
    shutil.copy(trec_model, model)
    service = scoring_service(model_path=str(model))
    raw = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"

    async def ask(request: bytes) -> bytes:
        ours, theirs = socket.socketpair()
        door = SpamdDoor(service, "127.0.0.1", 0)
        served = asyncio.create_task(door._session(*await asyncio.open_connection(sock=theirs)))
        reader, writer = await asyncio.open_connection(sock=ours)
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        await served
        return answer

    head = f"Content-length: {len(raw)}\r\n\r\n".encode()
    tell = asyncio.run(ask(b"TELL SPAMC/1.5\r\nMessage-class: spam\r\nSet: local\r\n" + head + raw))
    check = asyncio.run(ask(b"CHECK SPAMC/1.5\r\n" + head + raw))
    assert tell.startswith(b"SPAMD/1.1 77 EX_NOPERM TELL (learning) is accepted from loopback only")
    assert message_digest(raw) not in LinearModel.load(model).ledger.digests
    assert check.startswith(b"SPAMD/1.1 0 EX_OK") and b"Spam: " in check
