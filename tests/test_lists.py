"""Address lists (rules/lists.py): block entries always count, allow entries
only for a From address authenticated by SPF or DKIM, checked against a real
DNS server on 127.0.0.1 (dnslib) with messages DKIM-signed here."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import replace

import dkim
import pytest
from conftest import free_port
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSServer

from mailsift import Filter
from mailsift.cli import main
from mailsift.config import Config, ConfigError, load_config
from mailsift.filter import DEFAULT_MODEL
from mailsift.rules import Context
from mailsift.rules.lists import AddressLists, normalise
from mailsift.rules.names import is_informational, known_rule_names
from mailsift.score import explain
from mailsift.users import Users

GOOD_IP = "81.2.69.160"  # allowed by example.org's SPF record
LIST_IP = "81.2.69.200"  # allowed by lists.example.net's
BAD_IP = "81.2.69.99"


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkim")
    subprocess.run(["openssl", "genrsa", "-out", d / "k.pem", "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", d / "k.pem", "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return (d / "k.pem").read_bytes(), base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def dns_server(dkim_key):
    records = {
        "example.org.": f"v=spf1 ip4:{GOOD_IP} -all",
        "lists.example.net.": f"v=spf1 ip4:{LIST_IP} -all",
        "sel._domainkey.example.org.": f"v=DKIM1; k=rsa; p={dkim_key[1]}",
        "sel._domainkey.other.example.": f"v=DKIM1; k=rsa; p={dkim_key[1]}",
    }

    class Zones(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            name = str(request.q.qname).lower()
            if request.q.qtype == QTYPE.TXT and name in records:
                value = records[name]
                reply.add_answer(
                    RR(name, QTYPE.TXT, rdata=TXT([value[i : i + 250] for i in range(0, len(value), 250)]))
                )
            elif name not in records:
                reply.header.rcode = RCODE.NXDOMAIN
            return reply

    class Quiet:
        def __getattr__(self, n):
            return lambda *a, **k: None

    port = free_port()
    server = DNSServer(Zones(), address="127.0.0.1", port=port, logger=Quiet())
    server.start_thread()
    yield f"127.0.0.1:{port}"
    server.stop()


def _config(dns: str | None, allow=(), block=(), tmp_path=None) -> Config:
    config = Config()
    if dns:
        config.dns = replace(config.dns, servers=[dns], timeout=1.0, deadline=3.0)
        config.auth = replace(config.auth, enabled=True)
    config.lists = replace(config.lists, allow=list(allow), block=list(block))
    if tmp_path is not None:
        config.store = replace(config.store, path=str(tmp_path / "users"))
    return config


def _msg(from_: str = "alice@example.org", body: str = "Hello Bob.") -> bytes:
    return (
        f"From: Alice <{from_}>\r\nTo: bob@example.net\r\nSubject: hello\r\n"
        f"Date: Mon, 01 Jul 2024 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n{body}\r\n"
    ).encode()


def _sign(raw: bytes, key: bytes, domain: bytes) -> bytes:
    return dkim.sign(raw, b"sel", domain, key, include_headers=[b"from", b"to", b"subject"]) + raw


def _hits(verdict) -> dict[str, object]:
    return {h.name: h for h in verdict.hits}


def test_block_entry_counts_for_from_or_envelope_sender_without_any_authentication():
    flt = Filter(_config(None, block=["*@spammer.example"]), str(DEFAULT_MODEL))
    base = flt.score(_msg("news@elsewhere.example"))
    by_from = flt.score(_msg("Boss@Spammer.Example"))
    by_envelope = flt.score(_msg("news@elsewhere.example"), context=Context(mail_from="x@spammer.example"))
    assert _hits(by_from)["BLOCK_LISTED"].score == 20.0
    assert _hits(by_from)["BLOCK_LISTED"].detail == "*@spammer.example matches boss@spammer.example (From)"
    assert (
        _hits(by_envelope)["BLOCK_LISTED"].detail == "*@spammer.example matches x@spammer.example (envelope)"
    )
    assert "BLOCK_LISTED" in _hits(by_envelope) and "BLOCK_LISTED" not in _hits(base)
    assert "BLOCK_LISTED" in _hits(flt.score(_msg("boss@spammer.example")))  # case does not matter
    assert by_from.action == "reject"


def test_allow_entry_counts_when_spf_passes_for_an_envelope_domain_aligned_with_from(dns_server):
    flt = Filter(_config(dns_server, allow=["*@example.org"]), str(DEFAULT_MODEL))
    ok = flt.score(_msg(), context=Context(GOOD_IP, "mx.example.org", "bounce@example.org"))
    hit = _hits(ok)["ALLOW_LISTED"]
    assert hit.score == -20.0 and "SPF pass" in hit.detail
    forged = flt.score(_msg(), context=Context(BAD_IP, "mx.example.org", "bounce@example.org"))
    assert "ALLOW_LISTED" not in _hits(forged)
    assert _hits(forged)["ALLOW_LISTED_UNVERIFIED"].score == 0.0
    assert forged.score > ok.score + 19


def test_spf_pass_for_another_domain_does_not_authenticate_the_from_address(dns_server):
    flt = Filter(_config(dns_server, allow=["*@example.org"]), str(DEFAULT_MODEL))
    # the list server's own envelope passes SPF, but From says example.org
    v = flt.score(_msg(), context=Context(LIST_IP, "lists.example.net", "bounce@lists.example.net"))
    assert "SPF_PASS" in _hits(v)
    assert "ALLOW_LISTED" not in _hits(v) and "ALLOW_LISTED_UNVERIFIED" in _hits(v)


def test_allow_entry_counts_with_a_dkim_signature_aligned_with_from_and_not_another(dns_server, dkim_key):
    flt = Filter(_config(dns_server, allow=["alice@example.org"]), str(DEFAULT_MODEL))
    ctx = Context(BAD_IP, "x", "bounce@lists.example.net")  # SPF fails for the list's envelope
    aligned_sig = flt.score(_sign(_msg(), dkim_key[0], b"example.org"), context=ctx)
    assert "DKIM pass" in _hits(aligned_sig)["ALLOW_LISTED"].detail
    other_sig = flt.score(_sign(_msg(), dkim_key[0], b"other.example"), context=ctx)
    assert "DKIM_PASS" in _hits(other_sig) and "ALLOW_LISTED" not in _hits(other_sig)


def test_allow_entries_are_not_honoured_when_authentication_is_off():
    flt = Filter(_config(None, allow=["*@example.org"]), str(DEFAULT_MODEL))
    v = flt.score(_msg())
    hit = _hits(v)["ALLOW_LISTED_UNVERIFIED"]
    assert "[auth] is not enabled" in hit.detail and "ALLOW_LISTED" not in _hits(v)
    assert "ALLOW_LISTED_UNVERIFIED" in explain(v)


def test_a_users_lists_count_for_that_user_only(dns_server, tmp_path):
    config = _config(dns_server, tmp_path=tmp_path)
    users = Users.open(config)
    users.set_lists("alice", AddressLists.of(["*@example.org"], ["*@junk.example"]))
    flt = Filter(config, str(DEFAULT_MODEL), users=users)
    ctx = Context(GOOD_IP, "mx.example.org", "bounce@example.org")
    alice, bob = flt.score(_msg(), context=ctx, user="alice"), flt.score(_msg(), context=ctx, user="bob")
    assert _hits(alice)["USER_ALLOW_LISTED"].score == -20.0
    assert "USER_ALLOW_LISTED" not in _hits(bob)
    assert alice.score == pytest.approx(bob.score - 20.0)
    junk = flt.score(_msg("x@junk.example"), user="alice")
    assert _hits(junk)["USER_BLOCK_LISTED"].score == 20.0
    assert "USER_BLOCK_LISTED" not in _hits(flt.score(_msg("x@junk.example"), user="bob"))
    assert "rule    USER_ALLOW_LISTED" in explain(alice) and "user    alice" in explain(alice)


def test_rule_weights_price_the_lists_and_the_names_are_registered(tmp_path):
    names = known_rule_names()
    for name in ("ALLOW_LISTED", "BLOCK_LISTED", "USER_ALLOW_LISTED", "USER_BLOCK_LISTED"):
        assert name in names and not is_informational(name)
    assert is_informational("ALLOW_LISTED_UNVERIFIED") and is_informational("USER_STATE_ERROR")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[lists]\nblock = ["*@spammer.example"]\n[rule_weights]\nBLOCK_LISTED = 7.5\n')
    flt = Filter(load_config(str(cfg)), str(DEFAULT_MODEL))
    assert _hits(flt.score(_msg("a@spammer.example")))["BLOCK_LISTED"].score == 7.5


@pytest.mark.parametrize(
    "text, words",
    [
        ('[lists]\nallow = ["example.org"]\n', "address pattern"),
        ('[lists]\nblock = ["a b@example.org"]\n', "address pattern"),
        ('[lists]\nallow = "*@example.org"\n', "must be a list"),
        ("[rule_weights]\nALLOW_LISTED_UNVERIFIED = 3\n", "informational"),
    ],
)
def test_bad_list_config_is_refused_naming_the_key(tmp_path, text, words):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config(str(cfg))


def test_lists_command_keeps_a_users_lists_in_the_store(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "users"}"\n')
    assert main(["lists", "--config", str(cfg), "--user", "alice", "--allow", "*@Example.org"]) == 0
    assert main(["lists", "--config", str(cfg), "--user", "alice", "--block", "x@junk.example"]) == 0
    assert main(["lists", "--config", str(cfg), "--user", "alice", "--remove", "*@example.org"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["allow: (none)", "block: x@junk.example"]
    assert main(["lists", "--config", str(cfg), "--user", "alice", "--allow", "example.org"]) == 64
    users = Users.open(load_config(str(cfg)))
    assert users.lists("alice") == AddressLists((), ("x@junk.example",)) and not users.lists("bob")


def _raw(*from_lines: str) -> bytes:
    head = "".join(f"From: {line}\r\n" for line in from_lines)
    return (
        f"{head}To: bob@example.net\r\nSubject: hello\r\nDate: Mon, 01 Jul 2024 10:00:00 +0000\r\n"
        "Message-ID: <2@example.org>\r\n\r\nHello Bob.\r\n"
    ).encode()


@pytest.mark.parametrize(
    "entry, from_lines",
    [
        ("bad@blocked.example", ["a@good.example, bad@blocked.example"]),  # two authors
        ("bad@blocked.example", ["a@good.example", "bad@blocked.example"]),  # two From lines
        ("x@blocked.example", ['"x"@blocked.example']),  # a quoted local part is the same mailbox
        ("*@blocked.example", ['"a@b"@blocked.example']),  # an @ inside the quotes
        ("bad@blocked.example", ["bad(a comment)@blocked.example"]),
        ("bad@blocked.example", ['"ok@good.example" <bad@blocked.example>']),
        ("bad@blocked.example", ["ok@good.example <bad@blocked.example>"]),
        ("bad@blocked.example", ["=?utf-8?q?ok=40good.example?= <bad@blocked.example>"]),
        ("bad@blocked.example", ['"bad@blocked.example" <ok@good.example>']),  # what the reader sees
        ("bad@blocked.example", ["ok@good.example (bad@blocked.example)"]),
        ("bad@blocked.example", ["friends: ok@good.example, bad@blocked.example;"]),
        ("bad@blocked.example", ["Bad <BAD@Blocked.Example.>"]),
        ("bad@blocked.example", ['"unterminated <bad@blocked.example>']),
        ("*@bücher.example", ["x@xn--bcher-kva.example"]),  # either IDNA spelling
        ("*@xn--bcher-kva.example", ["x@bücher.example"]),
        ("*@bücher.example", ["x@BÜCHER.example"]),  # IDNA's case mapping, either side
        ("*@BÜCHER.example", ["x@bücher.example"]),
        ("*@*.bücher.example", ["x@MX.BÜCHER.example"]),
        ("*@xn--bcher-kva.example", ["x@BÜCHER.EXAMPLE"]),
        ("*@bücher.example", ["x@XN--BCHER-KVA.example"]),
        ("*@straße.de", ["x@xn--strae-oqa.de"]),  # IDNA2008: ß stays ß
        ("*@xn--strae-oqa.de", ["x@STRAßE.de"]),
        ("bad@blocked.example", [f"ok{i}@good.example" for i in range(12)] + ["bad@blocked.example"]),
        ("bad@blocked.example", ["bad@blocked.example"] + [f"ok{i}@good.example" for i in range(12)]),
    ],
)
def test_a_block_entry_matches_any_address_the_from_lines_show(entry, from_lines):
    flt = Filter(_config(None, block=[entry]), str(DEFAULT_MODEL))
    hit = _hits(flt.score(_raw(*from_lines))).get("BLOCK_LISTED")
    assert hit is not None and hit.score == 20.0, from_lines
    assert hit.detail.startswith(f"{normalise(entry)} matches ")


@pytest.mark.parametrize(
    "entry, from_line",
    [
        ("bad@blocked.example", "bad@blocked.example.evil"),
        ("bad@blocked.example", "bad@sub.blocked.example"),
        ("bad@blocked.example", '"bad x"@blocked.example'),
        ("x@blocked.example", '"x."@blocked.example'),
        ("kate@example.org", "\u212aate@example.org"),  # the Kelvin sign is not k
        ("*@blocked.example", "ok@good.example"),
        ("*@straße.de", "x@strasse.de"),  # IDNA2003 mapped ß to ss: another domain
        ("*@faß.de", "x@fass.de"),
        ("*@strasse.de", "x@straße.de"),
    ],
)
def test_a_block_entry_does_not_match_other_mailboxes(entry, from_line):
    flt = Filter(_config(None, block=[entry]), str(DEFAULT_MODEL))
    assert "BLOCK_LISTED" not in _hits(flt.score(_raw(from_line)))


def test_a_block_entry_matches_a_unicode_upper_case_envelope_domain():
    flt = Filter(_config(None, block=["*@bücher.example"]), str(DEFAULT_MODEL))
    verdict = flt.score(_raw("ok@good.example"), context=Context(mail_from="x@BÜCHER.example"))
    hit = _hits(verdict)["BLOCK_LISTED"]
    assert hit.detail == "*@bücher.example matches x@bÜcher.example (envelope)"
    assert "BLOCK_LISTED" not in _hits(flt.score(_raw("ok@good.example")))


def test_a_domain_idna_cannot_encode_compares_by_its_folded_text():
    long = "ü" * 70 + ".example"  # a label over 63 characters: the codec refuses it
    flt = Filter(_config(None, block=[f"*@{long}"]), str(DEFAULT_MODEL))
    assert "BLOCK_LISTED" in _hits(flt.score(_raw(f"x@{long}")))
    assert "BLOCK_LISTED" not in _hits(flt.score(_raw("x@" + "u" * 70 + ".example")))


def test_an_allow_entry_does_not_take_on_the_idna_case_mapping():
    """Allow entries stay strict: only their own ASCII-folded spelling."""
    flt = Filter(_config(None, allow=["*@bücher.example"]), str(DEFAULT_MODEL))
    assert "ALLOW_LISTED_UNVERIFIED" in _hits(flt.score(_raw("x@bücher.example")))
    for other in ("x@BÜCHER.example", "x@xn--bcher-kva.example"):
        assert "ALLOW_LISTED_UNVERIFIED" not in _hits(flt.score(_raw(other))), other


def test_list_entries_fold_ascii_letters_only():
    lists = AddressLists.of(["KATE@Example.ORG", "\u212aATE@example.org"], [])
    assert lists.allow == ("kate@example.org", "\u212aate@example.org")
    flt = Filter(_config(None, block=["Kate@EXAMPLE.org"]), str(DEFAULT_MODEL))
    assert "BLOCK_LISTED" in _hits(flt.score(_raw("KATE@example.ORG")))
    assert "BLOCK_LISTED" not in _hits(flt.score(_raw("\u212aate@example.org")))


SPF_OK = Context(GOOD_IP, "mx.example.org", "bounce@example.org")


@pytest.mark.parametrize(
    "from_lines, loose",
    [
        (["alice@example.org, bad@evil.example"], "bad@evil.example"),
        (["alice@example.org", "bad@evil.example"], "bad@evil.example"),
        (["bad@evil.example", "alice@example.org"], "bad@evil.example"),
        (['"bad@evil.example" <alice@example.org>'], "bad@evil.example"),
        (["Alice <alice@example.org> (sent for boss@evil.example)"], "boss@evil.example"),
    ],
)
def test_an_authenticated_allowed_address_never_launders_a_second_from(dns_server, from_lines, loose):
    flt = Filter(_config(dns_server, allow=["*@example.org"]), str(DEFAULT_MODEL))
    v = flt.score(_raw(*from_lines), context=SPF_OK)
    assert "SPF_PASS" in _hits(v) and "ALLOW_LISTED" not in _hits(v)
    hit = _hits(v)["ALLOW_LISTED_UNVERIFIED"]
    assert f"also shows {loose}, not authenticated" in hit.detail and "SPF pass" in hit.detail
    assert "ALLOW_LISTED_UNVERIFIED" in explain(v) and loose in explain(v)


def test_two_from_addresses_of_the_authenticated_domain_are_honoured(dns_server):
    flt = Filter(_config(dns_server, allow=["alice@example.org"]), str(DEFAULT_MODEL))
    v = flt.score(_raw("alice@example.org, bob@example.org"), context=SPF_OK)
    hit = _hits(v)["ALLOW_LISTED"]
    assert hit.score == -20.0 and "other From addresses are authenticated too (bob@example.org)" in hit.detail
    quoted = flt.score(_raw('"alice"@Example.ORG'), context=SPF_OK)  # the same mailbox, quoted
    assert "ALLOW_LISTED" in _hits(quoted)


def test_dkim_for_one_from_address_does_not_vouch_for_another(dns_server, dkim_key):
    flt = Filter(_config(dns_server, allow=["alice@example.org"]), str(DEFAULT_MODEL))
    ctx = Context(BAD_IP, "x", "bounce@lists.example.net")  # SPF fails: DKIM is all there is
    alone = flt.score(_sign(_raw("alice@example.org"), dkim_key[0], b"example.org"), context=ctx)
    assert "DKIM pass" in _hits(alone)["ALLOW_LISTED"].detail
    two = flt.score(
        _sign(_raw("alice@example.org, eve@other.example"), dkim_key[0], b"example.org"), context=ctx
    )
    assert "DKIM_PASS" in _hits(two) and "ALLOW_LISTED" not in _hits(two)
    assert "also shows eve@other.example" in _hits(two)["ALLOW_LISTED_UNVERIFIED"].detail
    # both domains signed: both authenticated, honoured
    signed = _sign(_raw("alice@example.org, eve@other.example"), dkim_key[0], b"example.org")
    both = _sign(signed, dkim_key[0], b"other.example")
    assert "ALLOW_LISTED" in _hits(flt.score(both, context=ctx))


def test_a_users_block_entry_matches_a_second_from_line_too(tmp_path):
    config = _config(None, tmp_path=tmp_path)
    users = Users.open(config)
    users.set_lists("o'brien", AddressLists.of([], ["bad@blocked.example"]))
    flt = Filter(config, str(DEFAULT_MODEL), users=users)
    raw = _raw("ok@good.example", "bad@blocked.example")
    assert _hits(flt.score(raw, user="o'brien"))["USER_BLOCK_LISTED"].score == 20.0
    assert "USER_BLOCK_LISTED" not in _hits(flt.score(raw, user="obrien"))


def test_hostile_from_headers_are_read_in_bounded_time():
    raws = [
        _raw(*[junk] * 30) for junk in ('"' * 2000, "(" * 2000, "a@" * 1000, "a." * 1000 + "@b", "<" * 2000)
    ]
    flt = Filter(_config(None, block=["*@blocked.example"]), str(DEFAULT_MODEL))
    for raw in raws:
        assert "BLOCK_LISTED" not in _hits(flt.score(raw))
