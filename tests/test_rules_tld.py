import subprocess
import sys

from conftest import HAM

from mailsift.parse import parse
from mailsift.rules.tld import DomainRules, check, registered_domain


def _hits(raw: bytes, rules: DomainRules | None = None, envelope: str = "") -> dict[str, float]:
    return {h.name: h.score for h in check(parse(raw), envelope, rules or DomainRules())}


def test_blocked_tld_in_the_senders_domains():
    raw = HAM.replace(b"alice@example.org", b"promo@deals.example.top")
    assert _hits(raw) == {"SENDER_TLD_BLOCKED": 1.5}
    assert _hits(HAM, envelope="bounce@mailer.example.xyz") == {"SENDER_TLD_BLOCKED": 1.5}
    assert _hits(HAM) == {}


def test_blocked_tld_in_url_hosts_and_received_hosts():
    raw = HAM.replace(b"See you at noon.", b"Click https://win.prize.example.click/x now")
    assert _hits(raw) == {"URL_TLD_BLOCKED": 1.0}
    rcvd = b"Received: from relay.example.icu (relay.example.icu [81.2.69.160]) by mx.test\r\n" + HAM
    assert _hits(rcvd) == {"RCVD_TLD_BLOCKED": 0.5}


def test_blocked_domain_matches_by_registered_domain():
    rules = DomainRules(blocked_domains=["bad.co.uk"])
    raw = HAM.replace(b"See you at noon.", b"see http://www.shop.bad.co.uk/p")
    assert _hits(raw, rules) == {"URL_DOMAIN_BLOCKED": 2.0}
    assert registered_domain("a.b.example.co.uk") == "example.co.uk"
    assert registered_domain("localhost") == "localhost"


def test_allow_list_wins_over_every_block():
    raw = HAM.replace(b"alice@example.org", b"news@letters.example.top").replace(
        b"See you at noon.", b"https://x.example.xyz/"
    )
    assert set(_hits(raw)) == {"SENDER_TLD_BLOCKED", "URL_TLD_BLOCKED"}
    assert _hits(raw, DomainRules(allowed_domains=["example.top"])) == {"SENDER_ALLOWED": 0.0}
    assert _hits(raw, DomainRules(allowed_senders=["news@letters.example.top"])) == {"SENDER_ALLOWED": 0.0}


def test_domain_rules_come_from_the_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[domains]\nblocked_tlds = ["org"]\nsender_score = 4.0\n')
    msg = tmp_path / "m.eml"
    msg.write_bytes(HAM)
    r = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "--config", cfg, "score", "--explain", msg],
        capture_output=True,
    )
    assert b"SENDER_TLD_BLOCKED" in r.stdout and b"+4.00" in r.stdout
    cfg.write_text('[domains]\nblocked_tlds = "org"\n')
    r = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "--config", cfg, "score", msg], capture_output=True
    )
    assert r.returncode == 78 and b"blocked_tlds" in r.stderr
