"""The HTTP door and its Prometheus metrics: a real ``mailsift serve``
process on loopback, real HTTP."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families


def post(url: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric_samples(srv) -> dict:
    """(name, labels) -> value, through prometheus-client's own parser."""
    status, text = get(srv.url("/metrics"))
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


@pytest.fixture
def model(trec_model, tmp_path):
    path = tmp_path / "model.npz"
    shutil.copy(trec_model, path)
    return path


def test_post_score_agrees_with_mailsift_score_json(serving, model, trec_test_sample, tmp_path):
    srv = serving(model, ("http",))
    for path in (trec_test_sample[0][0], trec_test_sample[0][5], trec_test_sample[1][0]):
        status, served = post(srv.url("/score"), path.read_bytes())
        assert status == 200
        cli = subprocess.run(
            [sys.executable, "-m", "mailsift.cli", "--config", str(srv.config), "score", "--json",
             "--model", str(model), str(path)],
            capture_output=True, env=srv.env, timeout=120,
        )  # fmt: skip
        local = json.loads(cli.stdout)
        # the service's workers name its 3 strongest features each way, the CLI 8
        served_evidence, local_evidence = served.pop("evidence"), local.pop("evidence")
        assert served == local
        assert served_evidence and all(e in local_evidence for e in served_evidence)


def test_metrics_parse_and_count_exactly_the_messages_scored(serving, model, trec_test_sample):
    srv = serving(model, ("http", "spamd"))
    before = metric_samples(srv)
    spam, ham = trec_test_sample
    for path in spam[:3] + ham[:2]:
        assert post(srv.url("/score"), path.read_bytes())[0] == 200
    for path in ham[2:5]:
        subprocess.run(["spamc", "-p", str(srv.ports["spamd"]), "-c"], input=path.read_bytes(),
                       capture_output=True, timeout=60)  # fmt: skip
    after = metric_samples(srv)
    grew = total(after, "mailsift_messages_total") - total(before, "mailsift_messages_total")
    assert grew == 8
    assert total(after, "mailsift_messages_total", door="http") == 5
    assert total(after, "mailsift_messages_total", door="spamd") == 3
    assert total(after, "mailsift_scoring_seconds_count") == 8
    info = [lab for (n, lab), v in after.items() if n == "mailsift_model_info" and v == 1]
    assert len(info) == 1 and dict(info[0])["path"] == str(model) and int(dict(info[0])["messages"]) > 0
    post(srv.url("/learn?class=spam"), ham[0].read_bytes())
    post(srv.url("/learn?class=spam"), ham[0].read_bytes())
    learned = metric_samples(srv)
    assert total(learned, "mailsift_learn_total", **{"class": "spam", "outcome": "learned"}) == 1
    assert total(learned, "mailsift_learn_total", **{"class": "spam", "outcome": "already-learned"}) == 1
    assert total(learned, "mailsift_messages_total") == total(
        after, "mailsift_messages_total"
    )  # learning is not scoring


def test_learn_and_unlearn_answer_their_outcome(serving, model, trec_test_sample):
    srv = serving(model, ("http",))
    raw = trec_test_sample[1][3].read_bytes()
    steps = [
        ("/learn?class=spam", "learned"),
        ("/learn?class=spam", "already-learned"),
        ("/learn?class=ham", "relabelled"),
        ("/unlearn?class=spam", "other-class"),
        ("/unlearn?class=ham", "unlearned"),
        ("/unlearn", "not-learned"),
    ]
    for endpoint, outcome in steps:
        status, doc = post(srv.url(endpoint), raw)
        assert (status, doc["outcome"]) == (200, outcome), endpoint


def test_learn_endpoints_need_the_token_when_one_is_configured(serving, model, trec_test_sample):
    srv = serving(model, ("http",), config='[serve]\nhttp_token = "s3cret"\n')
    raw = trec_test_sample[1][4].read_bytes()
    assert post(srv.url("/learn?class=spam"), raw)[0] == 401
    assert post(srv.url("/learn?class=spam"), raw, token="wrong")[0] == 401
    assert post(srv.url("/unlearn"), raw)[0] == 401
    assert post(srv.url("/learn?class=spam"), raw, token="s3cret") == (
        200,
        {"outcome": "learned", "class": "spam"},
    )
    assert post(srv.url("/score"), raw)[0] == 200  # scoring needs no token


def test_beyond_loopback_learning_is_refused_without_a_token():
    from mailsift.config import Config
    from mailsift.serve.http import HttpDoor, HttpError

    service = type("S", (), {"config": Config()})()
    door = HttpDoor(service, "0.0.0.0", 0)  # not started: only the rule is under test
    with pytest.raises(HttpError) as err:
        door._authorise({})
    assert err.value.status == 403
    HttpDoor(service, "127.0.0.1", 0)._authorise({})  # loopback, no token set: allowed


def test_a_token_set_or_removed_by_a_reload_applies_at_once():
    """SIGHUP re-reads the config (Service.reload replaces service.config):
    a token added on a loopback door is asked for from the next request;
    one removed from a loopback door is no longer asked for."""
    from mailsift.config import Config
    from mailsift.serve.http import HttpDoor, HttpError

    service = type("S", (), {"config": Config()})()
    door = HttpDoor(service, "127.0.0.1", 0)
    door._authorise({})
    with_token = Config()
    with_token.serve.http_token = "s3cret"
    service.config = with_token  # the reload
    with pytest.raises(HttpError) as err:
        door._authorise({})
    assert err.value.status == 401
    door._authorise({"authorization": "Bearer s3cret"})
    service.config = Config()  # token removed again
    door._authorise({})


def _raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)  # all of it: a short body is short, not slow
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bad_requests_get_their_status_and_the_door_stays_up(serving, model):
    srv = serving(
        model, ("http",), config="[proxy]\nmax_message_size = 10000\n[serve]\nrequest_timeout = 3\n"
    )
    port = srv.ports["http"]
    assert post(srv.url("/score"), b"x" * 20000)[0] == 413
    cases = {
        b"garbage\r\n\r\n": b" 400 ",
        b"GET /nothing HTTP/1.1\r\n\r\n": b" 404 ",
        b"GET /score HTTP/1.1\r\n\r\n": b" 405 ",
        b"POST /score HTTP/1.1\r\n\r\n": b" 411 ",
        b"POST /score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": b" 411 ",
        b"POST /score HTTP/1.1\r\nContent-Length: -5\r\n\r\n": b" 400 ",
        b"POST /score HTTP/1.1\r\nContent-Length: 50\r\n\r\nshort": b" 400 ",
        b"POST /learn?class=eggs HTTP/1.1\r\nContent-Length: 1\r\n\r\nx": b" 400 ",
        b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n": b" 431 ",
        b"GET /healthz HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n": b" 431 ",
    }
    for request, status in cases.items():
        answer = _raw_http(port, request)
        assert status in answer.split(b"\r\n")[0], (request[:50], answer[:200])
    assert post(srv.url("/score"), b"\xff\xfe not a message at all \x00")[0] == 200  # a verdict, not a crash
    status, body = get(srv.url("/healthz"))
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert total(metric_samples(srv), "mailsift_errors_total", kind="bad_request") >= 9


def test_expect_100_continue_is_answered_before_the_body_is_sent(scoring_service):
    """curl sends ``Expect: 100-continue`` for bodies over 1 MiB and holds
    the body back until the server says 100 (or a second passes): without
    the interim answer every large message costs a second.  A request
    refused on its head (413 here) gets the refusal instead of 100."""
    import asyncio

    from mailsift.config import Config
    from mailsift.serve.http import HttpDoor

    config = Config()
    config.proxy.max_message_size = 4 << 20
    service = scoring_service(config)
    body = b"From: a@example.org\r\nSubject: big\r\n\r\n" + b"x" * (1100 * 1024) + b"\r\n"

    async def ask(length: int) -> tuple[bytes, bytes]:
        door = HttpDoor(service, "127.0.0.1", 0)
        await door.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
            writer.write(
                f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # before any body
            if interim.startswith(b"HTTP/1.1 100 "):
                writer.write(body)
                writer.write_eof()
            final = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            return interim, final
        finally:
            door.close()
            await door.stop(5)

    interim, final = asyncio.run(ask(len(body)))
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 OK\r\n") and b'"action": ' in final
    interim, _ = asyncio.run(ask(8 << 20))
    assert interim.startswith(b"HTTP/1.1 413 ")


def test_every_error_kind_is_exported_at_zero_before_the_first_error():
    """An alert on ``increase(mailsift_errors_total{kind="scoring_failed"}[5m])``
    never fires on the first failure if the series only appears with it
    (Prometheus sees 1 as the start value): every kind the help text names
    is there, at 0, from start."""
    from mailsift.serve.metrics import ERROR_KINDS, Metrics

    metrics = Metrics()
    samples = {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
        if s.name == "mailsift_errors_total"
    }
    assert samples == {kind: 0.0 for kind in ERROR_KINDS}
    assert {"scoring_failed", "scoring_timeout", "dns_deadline", "next_hop_down"} <= set(ERROR_KINDS)
    metrics.error("scoring_failed")
    assert 'mailsift_errors_total{kind="scoring_failed"} 1.0' in metrics.render().decode()
