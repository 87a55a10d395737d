"""The service behind every door: one scoring pool, one learner that alone
writes the model; and ``mailsift serve`` choosing its doors."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import HAM, free_port

from mailsift.config import Config, ConfigError
from mailsift.filter import DEFAULT_MODEL
from mailsift.model import LinearModel
from mailsift.serve import LearnRefused, Service, door_addresses
from mailsift.train import message_digest


@pytest.fixture
def model(trec_model, tmp_path):
    path = tmp_path / "model.npz"
    shutil.copy(trec_model, path)
    return path


def run_service(model, coro_fn, **kw):
    async def main():
        service = Service(Config(), str(model), workers=-1, **kw)
        await service.start()
        try:
            return await coro_fn(service)
        finally:
            await service.close()

    return asyncio.run(main())


def test_concurrent_learns_are_serialised_and_none_is_lost(model, trec_test_sample):
    raws = [p.read_bytes() for p in trec_test_sample[0] + trec_test_sample[1]]

    async def go(service):
        return await asyncio.gather(*(service.learn(r, spam=i % 2 == 0) for i, r in enumerate(raws)))

    assert run_service(model, go) == ["learned"] * len(raws)
    ledger = LinearModel.load(model).ledger.digests
    assert all(ledger[message_digest(r)][0] == int(i % 2 == 0) for i, r in enumerate(raws))


def test_a_learned_message_is_scored_by_the_new_model_at_once(model, trec_test_sample):
    raw = trec_test_sample[1][0].read_bytes()

    async def go(service):
        before = await service.score(raw)
        assert await service.learn(raw, spam=True) == "learned"
        after = await service.score(raw)
        return before, after

    before, after = run_service(model, go)
    assert after.probability > before.probability


def test_learn_outcomes_through_the_service(model, trec_test_sample):
    raw = trec_test_sample[0][2].read_bytes()

    async def go(service):
        return [
            await service.learn(raw, True),
            await service.learn(raw, True),
            await service.learn(raw, False),
            await service.learn(raw, True, forget=True),
            await service.learn(raw, None, forget=True),
            await service.learn(raw, None, forget=True),
        ]

    assert run_service(model, go) == [
        "learned", "already-learned", "relabelled", "other-class", "unlearned", "not-learned"
    ]  # fmt: skip


def test_the_learner_reads_a_model_replaced_on_disk_before_writing(model, trec_model, trec_test_sample):
    a, b = (p.read_bytes() for p in trec_test_sample[1][:2])

    async def go(service):
        await service.learn(a, True)
        shutil.copy(trec_model, model.with_suffix(".new"))  # a 'mailsift train' lands meanwhile
        model.with_suffix(".new").replace(model)
        await service.learn(b, True)

    run_service(model, go)
    ledger = LinearModel.load(model).ledger.digests
    assert message_digest(b) in ledger and message_digest(a) not in ledger  # the new file, not our old copy


def test_learning_into_the_shipped_default_model_is_refused(trec_test_sample):
    async def go(service):
        with pytest.raises(LearnRefused, match="shipped default"):
            await service.learn(trec_test_sample[0][0].read_bytes(), True)
        return await service.score(trec_test_sample[0][0].read_bytes())  # scoring still works

    assert run_service(DEFAULT_MODEL, go).model_name == str(DEFAULT_MODEL)


def test_a_scoring_failure_is_counted_and_raised(model):
    async def go(service):
        service.scorer.pool.executor.shutdown()  # a scorer that cannot take work
        with pytest.raises(RuntimeError):
            await service.score(HAM, door="test")
        return service.metrics.render().decode()

    text = run_service(model, go)
    assert 'mailsift_errors_total{kind="scoring_failed"} 1.0' in text
    assert 'mailsift_messages_total{action="error",door="test"} 1.0' in text


def test_doors_listen_only_where_named_and_smtp_only_by_default():
    config = Config()
    assert door_addresses(config) == {"smtp": "127.0.0.1:10025"}
    assert door_addresses(config, {"spamd": "127.0.0.1:783"}) == {"spamd": "127.0.0.1:783"}
    config.serve.http = "127.0.0.1:8025"
    assert door_addresses(config, {"smtp": "127.0.0.1:10025"}) == {
        "smtp": "127.0.0.1:10025", "http": "127.0.0.1:8025"
    }  # fmt: skip
    config.serve.spamd = "0.0.0.0:783"
    with pytest.raises(ConfigError, match="serve.spamd.*not a loopback"):
        door_addresses(config)
    config.proxy.allow_non_loopback = True  # the one switch, for every door
    assert door_addresses(config)["spamd"] == "0.0.0.0:783"


def test_serve_refuses_a_door_beyond_loopback(tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)}
    env.pop("MAILSIFT_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "serve", "--spamd", f"0.0.0.0:{free_port()}"],
        capture_output=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 78 and b"not a loopback address" in out.stderr


def _action(sink) -> str:
    return "accept" if b"X-Spam-Status: No" in sink.received[0][2] else "add_header"


def test_smtp_door_scores_through_the_service_and_counts_a_next_hop_down(serving, model, sink):
    srv = serving(model, ("smtp", "http"), extra=("--relay", f"127.0.0.1:{sink.port}"))
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as c:
        c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert len(sink.received) == 1 and b"X-Spam-Status: " in sink.received[0][2]
    sink.controller.stop()
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as c:
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            c.sendmail("s@example.org", ["a@example.net"], HAM)
    assert err.value.smtp_code == 451
    text = urllib.request.urlopen(srv.url("/metrics"), timeout=30).read().decode()
    assert f'mailsift_messages_total{{action="{_action(sink)}",door="smtp"}} 1.0' in text
    assert 'mailsift_errors_total{kind="next_hop_down"} 1.0' in text


def test_mailsift_learn_hands_off_to_the_running_service_else_writes_the_file(
    serving, model, trec_test_sample, tmp_path
):
    port = free_port()
    srv = serving(model, ("http",), config=f'[serve]\nhttp = "127.0.0.1:{port}"\n')
    assert srv.ports["http"] != port  # the fixture's --http wins over the config ...
    srv.ports["http"] = port
    srv.stop()
    srv = serving(model, (), config=f'[serve]\nhttp = "127.0.0.1:{port}"\n')  # ... so: from the config
    raw = trec_test_sample[0][3]

    def learn(*args):
        return subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "--config", str(srv.config), "learn", *args, str(raw)],
            capture_output=True, env={**srv.env, "MAILSIFT_CONFIG": ""}, timeout=120,
        )  # fmt: skip

    first = learn("--spam")
    assert first.returncode == 0 and b"learned as spam (through the service" in first.stdout, first
    status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30).read())
    assert status["status"] == "ok"
    assert LinearModel.load(model).ledger.digests[message_digest(raw.read_bytes())][0] == 1
    again = learn("--spam")
    assert b"already learned" in again.stdout and b"through the service" in again.stdout
    srv.stop()
    # no service running: the note, and the model file itself
    cfg = tmp_path / "direct.toml"
    cfg.write_text(f'[serve]\nhttp = "127.0.0.1:{port}"\n[model]\npath = "{model}"\n')
    out = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "--config", str(cfg), "learn", "--ham", str(raw)],
        capture_output=True, env=srv.env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and b"no service at" in out.stderr and b"learned as ham" in out.stdout
    assert LinearModel.load(model).ledger.digests[message_digest(raw.read_bytes())][0] == 0


@pytest.mark.parametrize("named", ["--service", "serve.http"])
def test_mailsift_learn_says_clearly_when_what_answers_is_not_a_mailsift_service(tmp_path, named):
    """Failure injection: the port answers, but not HTTP (the spamd door,
    or any other daemon, given by mistake): a clear error naming the URL,
    no traceback, and nothing written behind the service's back."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_garbage():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"SPAMD/1.1 76 EX_PROTOCOL bad request line\r\n\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    model = tmp_path / "model.npz"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[model]\npath = "{model}"\n'
        + (f'[serve]\nhttp = "127.0.0.1:{port}"\n' if named != "--service" else "")
    )
    args = ["--service", url] if named == "--service" else []
    try:
        out = subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "--config", str(cfg), "learn", "--spam", *args, "-"],
            input=HAM, capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        listener.close()
    assert out.returncode == os.EX_UNAVAILABLE, out
    assert b"Traceback" not in out.stderr and f"{url}: not a mailsift service".encode() in out.stderr
    assert not model.exists()


def test_service_learns_and_cli_learns_into_the_same_file_lose_nothing(serving, model, trec_test_sample):
    """The service's learner takes the model's flock (MODEL.lock) like
    ``mailsift learn --model``: 4 learns through the HTTP door and 4 straight
    into the file, all at once, are all in the model afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    srv = serving(model, ("http",))
    raws = [p.read_bytes() for p in trec_test_sample[0][:8]]

    def through_service(raw: bytes) -> str:
        request = urllib.request.Request(srv.url("/learn?class=spam"), data=raw, method="POST")
        return json.loads(urllib.request.urlopen(request, timeout=120).read())["outcome"]

    def into_the_file(raw: bytes) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "learn", "--spam", "--model", str(model), "-"],
            input=raw, capture_output=True, env=srv.env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return "learned" if b"learned as spam" in done.stdout else done.stdout.decode()

    with ThreadPoolExecutor(8) as pool:
        service_side = [pool.submit(through_service, r) for r in raws[:4]]
        file_side = [pool.submit(into_the_file, r) for r in raws[4:]]
        outcomes = [f.result() for f in service_side + file_side]
    assert outcomes == ["learned"] * 8
    ledger = LinearModel.load(model).ledger.digests
    assert all(ledger[message_digest(r)][0] == 1 for r in raws)  # none lost


def test_sigterm_closes_every_door_at_once_and_the_smtp_session_in_flight_finishes(serving, sink):
    """Every listening socket refuses within a second of SIGTERM, even while
    the SMTP door still drains a session (which then completes), and the
    stop line counts each door."""
    import signal
    import socket
    import time

    doors = ("smtp", "milter", "spamd", "http")
    srv = serving(DEFAULT_MODEL, doors, extra=("--relay", f"127.0.0.1:{sink.port}"))
    c = smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30)
    c.ehlo()
    assert c.mail("s@example.org")[0] == 250 and c.rcpt("a@example.net")[0] == 250
    srv.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    open_doors = set(doors)
    while open_doors:
        for door in sorted(open_doors):
            try:
                socket.create_connection(("127.0.0.1", srv.ports[door]), timeout=2).close()
            except ConnectionRefusedError:
                open_doors.discard(door)
            except ConnectionResetError:
                pass  # queued as the listener closed: the kernel resets it; the next probe tells
        assert time.monotonic() - signalled < 1.0, f"still accepting after SIGTERM: {open_doors}"
        time.sleep(0.02)
    assert c.data(HAM)[0] == 250  # the session in flight completes
    c.quit()
    assert srv.proc.wait(30) == 0
    assert len(sink.received) == 1
    stop = [line for line in srv.log_text().splitlines() if "stopped: " in line]
    assert len(stop) == 1 and "stopped: 1 messages, 1 relayed" in stop[0], srv.log_text()
    assert "milter door: 0 messages, spamd door: 0 messages, http door: 0 messages" in stop[0]


def _wait_log(srv, text: str, count: int = 1, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while srv.log_text().count(text) < count:
        assert srv.proc.poll() is None and time.monotonic() < deadline, srv.log_text()
        time.sleep(0.1)
    return srv.log_text()


def test_start_up_and_reload_lines_say_which_model_and_what_changed_once(serving, small_model, tmp_path):
    """Start-up names the model (path, trained, messages); SIGHUP says what
    reloaded and warns that a changed door address needs a restart; a SIGHUP
    right after the file watcher reloaded the same files does not reload again."""
    model = tmp_path / "model.npz"
    shutil.copy(small_model, model)
    a, b = free_port(), free_port()
    srv = serving(model, ("http",), f'[serve]\nspamd = "127.0.0.1:{a}"\n')
    trained = LinearModel.load(model)
    text = _wait_log(
        srv, f"model {model} (trained {trained.trained_at}, {trained.n_ham + trained.n_spam} messages)"
    )
    srv.config.write_text(
        f'[thresholds]\nadd_header = 4.5\n[serve]\nspamd = "127.0.0.1:{b}"\nhttp_token = "t"\n'
    )
    srv.proc.send_signal(signal.SIGHUP)
    text = _wait_log(srv, "reloaded: ")
    line = next(x for x in text.splitlines() if "reloaded: " in x)
    assert f"model {model} (trained" in line and "(unchanged)" in line, line
    assert "changed: thresholds.add_header, serve.http_token" in line and (
        "[SIGHUP]" in line or "[config changed on disk]" in line
    ), line
    assert f"spamd (127.0.0.1:{a} -> 127.0.0.1:{b})" in text and "restart mailsift serve" in text
    # the token from the reloaded file applies at once (door addresses do not)
    req = urllib.request.Request(srv.url("/learn?class=spam"), data=b"Subject: x\r\n\r\nx\r\n", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    assert err.value.code == 401
    # the watcher notices a new model file; a SIGHUP just after it reloads nothing more
    fresh = tmp_path / "fresh.npz"
    shutil.copy(small_model, fresh)
    fresh.replace(model)
    text = _wait_log(srv, "[model changed on disk]")
    quiet = text.count("nothing to reload")  # 1 if the watcher won the race to the config above
    srv.proc.send_signal(signal.SIGHUP)
    text = _wait_log(srv, "nothing to reload", quiet + 1)
    assert text.count("reloaded: ") == 2, text
    assert (
        "(new file)"
        in text.splitlines()[[i for i, x in enumerate(text.splitlines()) if "reloaded: " in x][1]]
    )


def test_a_learn_that_does_not_wait_is_queued_applied_in_turn_and_not_lost_at_close(
    scoring_service, small_model, tmp_path
):
    model = tmp_path / "model.npz"
    shutil.copy(small_model, model)
    service = scoring_service(model_path=str(model))
    raws = [
        f"From: a@example.org\r\nTo: b@example.net\r\nSubject: q{i}\r\n\r\nqueued {i}\r\n".encode()
        for i in range(5)
    ]

    async def go():
        queued = [await service.learn(raw, True, wait=False) for raw in raws]
        await service.close()  # every queued click is applied before the learner stops
        return queued

    assert asyncio.run(go()) == ["queued"] * 5
    ledger = LinearModel.load(model).ledger.digests
    assert all(ledger[message_digest(raw)][0] == 1 for raw in raws)
