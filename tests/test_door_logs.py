"""One log line per request at the spamd and HTTP doors (and the milter's
per-message line), with the SMTP door's structured fields in JSON mode."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
import urllib.error
import urllib.request

import pytest

from mailsift.serve import doorlog


def _spamd(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _tell(body: bytes, cls: str = "spam") -> bytes:
    return (
        f"TELL SPAMC/1.5\r\nUser: alice\r\nMessage-class: {cls}\r\nSet: local\r\n"
        f"Content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _post(url: str, body: bytes, token: str | None = None) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def _records(srv, door: str, want: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        records = [json.loads(line) for line in srv.log_text().splitlines()]  # every line is JSON
        got = [r for r in records if r.get("door") == door]
        if len(got) >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture
def json_serving(serving, trec_model, tmp_path):
    model = tmp_path / "model.npz"
    shutil.copy(trec_model, model)
    return serving(model, ("spamd", "http"), '[serve]\nhttp_token = "tok"\n', ("--log-format", "json"))


def test_spamd_logs_one_structured_line_per_request_refused_ones_too(json_serving, trec_test_sample):
    srv = json_serving
    raw = trec_test_sample[0][2].read_bytes()
    port = srv.ports["spamd"]
    check = f"CHECK SPAMC/1.5\r\nUser: alice\r\nContent-length: {len(raw)}\r\n\r\n".encode() + raw
    assert b" 0 EX_OK" in _spamd(port, check)
    assert b" 65 " in _spamd(port, _tell(b"\x00\x01 binary, not mail"))  # EX_DATAERR
    assert b" 76 " in _spamd(port, b"FROB SPAMC/1.5\r\nContent-length: 0\r\n\r\n")  # unknown verb
    assert b"DidSet: local" in _spamd(port, _tell(raw))
    assert _spamd(port, b"PING SPAMC/1.5\r\n\r\n").startswith(b"SPAMD/1.5 0 PONG")  # not logged
    records = _records(srv, "spamd", 4)
    assert [r["event"] for r in records] == ["message", "refused", "refused", "learn"], records
    scored, not_mail, unknown, learned = records
    assert scored["score"] is not None and scored["action"] in ("accept", "add_header", "reject")
    assert scored["user"] == "alice" and scored["method"] == "CHECK" and scored["size"] == len(raw)
    assert isinstance(scored["hits"], list) and scored["ms"] >= 0
    assert (not_mail["code"], not_mail["method"]) == ("EX_DATAERR", "TELL") and "not a message" in not_mail[
        "error"
    ]
    assert unknown["code"] == "EX_PROTOCOL" and "unknown method" in unknown["error"]
    assert (learned["outcome"], learned["class"]) == ("learned", "spam")


def test_http_logs_one_structured_line_per_score_learn_and_401(json_serving, trec_test_sample):
    srv = json_serving
    raw = trec_test_sample[1][2].read_bytes()
    assert _post(srv.url("/score"), raw) == 200
    assert _post(srv.url("/learn?class=ham"), raw) == 401
    assert _post(srv.url("/learn?class=ham"), raw, token="tok") == 200
    urllib.request.urlopen(srv.url("/healthz"), timeout=60).read()  # not a scoring request: no line
    records = _records(srv, "http", 3)
    assert [(r["event"], r["path"], r["status"]) for r in records] == [
        ("message", "/score", 200),
        ("refused", "/learn", 401),
        ("learn", "/learn", 200),
    ]
    assert records[0]["score"] is not None and records[0]["action"] and records[0]["size"] == len(raw)
    assert "Bearer" in records[1]["error"]
    assert (records[2]["outcome"], records[2]["class"]) == ("learned", "ham")


def test_door_request_line_in_text_mode_has_the_same_facts(caplog):
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("mailsift.test")
    doorlog.request(logger, logging.INFO, "spamd", "learn", client="127.0.0.1", user="", outcome="learned")
    (rec,) = caplog.records
    assert rec.getMessage() == "spamd learn client=127.0.0.1 outcome=learned"
    assert rec.mailsift == {"event": "learn", "door": "spamd", "client": "127.0.0.1", "user": "",
                            "outcome": "learned"}  # fmt: skip


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_http_lines_name_the_user_given_escaped(serving, small_model, tmp_path, trec_test_sample, log_format):
    """As spamd logs User: ``user=`` on /score and /learn lines when ``?user=`` is given."""
    srv = serving(
        small_model, ("http",), f'[store]\npath = "{tmp_path}/users"\n', ("--log-format", log_format)
    )
    raw = trec_test_sample[1][2].read_bytes()
    assert _post(srv.url("/score?user=alice"), raw) == 200
    assert _post(srv.url("/learn?class=ham&user=o%27brien"), raw) == 200
    assert _post(srv.url("/score?user=a%0Ab"), raw) == 200  # unusable: site model, still logged
    assert _post(srv.url("/learn?class=ham&user=a%0Ab"), raw) == 400
    assert _post(srv.url("/score"), raw) == 200  # no user given: no user field
    if log_format == "json":
        records = _records(srv, "http", 5)
        assert [r.get("user") for r in records] == ["alice", "o'brien", "a\nb", "a\nb", None], records
        return
    deadline = time.monotonic() + 10
    while len(lines := [x for x in srv.log_text().splitlines() if " http " in f" {x}" and "path=" in x]) < 5:
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.1)
    assert " user=alice " in lines[0] + " " and " user=o'brien " in lines[1] + " "
    assert " user='a\\nb' " in lines[2] + " " and " user='a\\nb' " in lines[3] + " "
    assert "user=" not in lines[4] and all("\n" not in x for x in lines)
