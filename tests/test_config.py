"""The configuration file is validated: every value in its declared range,
every [rule_weights] name a real rule, one-line errors naming key and file."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from mailsift import bounds
from mailsift.config import (
    Config,
    ConfigError,
    DnsConfig,
    ModelConfig,
    ProxyConfig,
    StoreConfig,
    Thresholds,
    load_config,
    validate,
)
from mailsift.rules.dnsbl import Zone
from mailsift.rules.names import is_informational, known_rule_names

ENGINE = Path(__file__).resolve().parent.parent / "engine" / "mailsift"


def _load(tmp_path, text: str) -> Config:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    return load_config(str(cfg))


def _refused(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "c.toml") + ": ") and "\n" not in message
    return message


@pytest.mark.parametrize("value", ["-3", "0", "-0.0"])
def test_model_weight_must_be_positive(tmp_path, value):
    # weight = -3 used to be accepted and scored spam at -89 points
    assert "model.weight must be > 0" in _refused(tmp_path, f"[model]\nweight = {value}\n")


@pytest.mark.parametrize(
    "text, key",
    [
        ("[thresholds]\nadd_header = nan\n", "thresholds.add_header must be a finite number"),
        ("[thresholds]\nreject = inf\n", "thresholds.reject must be a finite number"),
        ("[model]\ndefault_cap = nan\n", "model.default_cap must be a finite number"),
        ("[dns]\ndeadline = inf\n", "dns.deadline must be a finite number"),
        ("[domains]\nsender_score = nan\n", "domains.sender_score must be a finite number"),
        ("[rule_weights]\nSPF_FAIL = nan\n", "rule_weights.SPF_FAIL must be a finite number"),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, text, key):
    assert key in _refused(tmp_path, text)


@pytest.mark.parametrize(
    "text, key",
    [
        ("[model]\ndefault_weight = 0\n", "model.default_weight must be > 0"),
        ("[model]\ndefault_cap = -1\n", "model.default_cap must be > 0"),
        ("[proxy]\ncommand_timeout = 0\n", "proxy.command_timeout must be > 0"),
        ("[proxy]\nrelay_timeout = -5\n", "proxy.relay_timeout must be > 0"),
        ("[proxy]\nscoring_deadline = 0\n", "proxy.scoring_deadline must be > 0"),
        ("[proxy]\nmax_message_size = 0\n", "proxy.max_message_size must be > 0"),
        ("[proxy]\nmax_sessions = -1\n", "proxy.max_sessions must be > 0"),
        ("[proxy]\nworkers = -1\n", "proxy.workers must be >= 0"),
        ("[dns]\ntimeout = 0\n", "dns.timeout must be > 0"),
        ('[proxy]\nlog_format = "xml"\n', "proxy.log_format must be text or json"),
        ('[proxy]\non_scoring_error = "drop"\n', "proxy.on_scoring_error must be pass or tempfail"),
    ],
)
def test_timeouts_sizes_and_choices_are_range_checked(tmp_path, text, key):
    assert key in _refused(tmp_path, text)


def test_reject_below_add_header_is_refused_naming_both(tmp_path):
    message = _refused(tmp_path, "[thresholds]\nadd_header = 6\nreject = 5\n")
    assert "thresholds.reject (5) must be >= thresholds.add_header (6)" in message
    assert _load(tmp_path, "[thresholds]\nadd_header = -3\nreject = -3\n").thresholds.reject == -3


def test_ports_are_checked_and_the_relay_needs_a_real_one(tmp_path):
    assert "proxy.listen must be HOST:PORT" in _refused(tmp_path, '[proxy]\nlisten = "127.0.0.1:70000"\n')
    assert "proxy.relay needs a port" in _refused(tmp_path, '[proxy]\nrelay = "127.0.0.1:0"\n')
    assert _load(tmp_path, '[proxy]\nlisten = "127.0.0.1:0"\n').proxy.listen.endswith(":0")  # any free port
    assert "dns.servers entry needs a port" in _refused(tmp_path, '[dns]\nservers = ["127.0.0.1:0"]\n')
    assert "dns.servers entry must be HOST:PORT" in _refused(tmp_path, '[dns]\nservers = ["127.0.0.1:x"]\n')


def test_unknown_rule_weight_is_refused_listing_the_known_names(tmp_path):
    message = _refused(tmp_path, "[rule_weights]\nSPF_FIAL = 2.0\n")
    assert "rule_weights.SPF_FIAL: no such rule (did you mean SPF_FAIL?)" in message
    listed = message.split("known rules: ")[1].split(", ")
    assert {"SPF_FAIL", "DMARC_FAIL_REJECT", "URL_TLD_BLOCKED", "SUBJECT_ALL_CAPS"} <= set(listed)
    assert not [n for n in listed if is_informational(n)]  # only names that may carry points


def test_dnsbl_names_are_rules_the_weights_may_name(tmp_path):
    zone = '[[dnsbl]]\nname = "RCVD_IN_X"\nzone = "x.test"\n'
    config = _load(tmp_path, zone + "\n[rule_weights]\nRCVD_IN_X = 4.0\nSPF_FAIL = 2\n")
    assert config.rule_weights == {"RCVD_IN_X": 4.0, "SPF_FAIL": 2.0}
    assert "RCVD_IN_Y: no such rule" in _refused(tmp_path, zone + "\n[rule_weights]\nRCVD_IN_Y = 4.0\n")


def test_informational_rules_cannot_be_given_points(tmp_path):
    zone = '[[dnsbl]]\nname = "RCVD_IN_X"\nzone = "x.test"\n\n'
    for name in ("DNS_DEADLINE", "CLIENT_FROM_RECEIVED", "SPF_TEMPERROR", "RCVD_IN_X_TIMEOUT"):
        message = _refused(tmp_path, f"{zone}[rule_weights]\n{name} = 0.4\n")
        assert f"rule_weights.{name}: is informational" in message
    assert _load(tmp_path, "[rule_weights]\nDNS_DEADLINE = 0\n").rule_weights == {"DNS_DEADLINE": 0.0}


def test_dnsbl_values_are_checked(tmp_path):
    base = '[[dnsbl]]\nname = "{name}"\nzone = "x.test"\n{extra}'
    assert "score must be a finite number" in _refused(tmp_path, base.format(name="X", extra="score = nan\n"))
    bad_code = 'codes = { "127.0.0.2" = [nan, "SBL"] }\n'
    assert "codes.127.0.0.2 points must be a finite" in _refused(
        tmp_path, base.format(name="X", extra=bad_code)
    )
    assert "letters, digits and _" in _refused(tmp_path, base.format(name="A,B", extra=""))
    assert "already the name of another rule" in _refused(tmp_path, base.format(name="SPF_FAIL", extra=""))
    twice = base.format(name="X", extra="") + "\n" + base.format(name="X", extra="")
    assert "already the name of another rule" in _refused(tmp_path, twice)


def test_command_line_overrides_are_validated_too():
    config = Config()
    config.proxy = replace(config.proxy, workers=-2)
    with pytest.raises(ConfigError, match="proxy.workers must be >= 0"):
        validate(config)
    config = Config()
    config.dnsbl = [Zone("RCVD_IN_X", "x.test", score=float("nan"))]
    with pytest.raises(ConfigError, match=r"dnsbl #1 \(RCVD_IN_X\)\.score must be a finite number"):
        validate(config)


def test_the_defaults_and_the_readme_example_are_valid(tmp_path):
    validate(Config())
    readme = (ENGINE.parent.parent / "README.md").read_text()
    block = readme.split("## Configuration", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert _load(tmp_path, block).thresholds.add_header == 5.0


@pytest.mark.parametrize("section", [ModelConfig, Thresholds, ProxyConfig, DnsConfig, StoreConfig])
def test_every_numeric_key_declares_its_range(section):
    """A new numeric key is validated only if it declares its range (see
    mailsift/bounds.py): this fails when one is added without."""
    missing = [f.name for f in fields(section) if f.type in ("int", "float") and not bounds.declared(f)]
    assert not missing, f"{section.__name__}: declare a range for {missing} with bounds.positive() etc."


def test_every_rule_name_the_code_emits_is_registered():
    """Literal rule names in the rule modules are in the registry (a new
    rule must be declared, or [rule_weights] would refuse it)."""
    known = known_rule_names(["RCVD_IN_X"])
    literal = re.compile(r'RuleHit\(\s*"([A-Z0-9_]+)"')
    sources = [*(ENGINE / "rules").glob("*.py"), ENGINE / "filter.py"]
    emitted = {n for path in sources for n in literal.findall(path.read_text())}
    assert emitted and emitted <= known, emitted - known
    assert {"RCVD_IN_X", "RCVD_IN_X_TIMEOUT", "SENDER_ALLOWED", "RCVD_DOMAIN_BLOCKED"} <= known


def test_cli_reports_a_bad_value_in_one_line_with_exit_78(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nweight = -3\n")
    r = subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "--config", cfg, "score", "-"],
        input=b"Subject: x\n\nhello\n",
        capture_output=True,
    )
    assert r.returncode == 78 and r.stdout == b""
    assert r.stderr.decode() == f"mailsift: {cfg}: model.weight must be > 0, got -3.0\n"


def test_users_naming_defaults_to_postfix_plus_and_bad_delimiters_or_domains_are_refused(tmp_path):
    assert Config().users.recipient_delimiter == "+" and Config().users.local_domains == []
    users = _load(tmp_path, '[users]\nrecipient_delimiter = "+-"\nlocal_domains = ["example.net"]\n').users
    assert (users.recipient_delimiter, users.local_domains) == ("+-", ["example.net"])
    assert _load(tmp_path, '[users]\nrecipient_delimiter = ""\n').users.recipient_delimiter == ""
    for bad in ("@", " ", "+\\t", '"', "+-=_.#%&!"):
        text = "[users]\nrecipient_delimiter = " + '"' + bad.replace("\\", "\\\\").replace('"', '\\"') + '"\n'
        assert "users.recipient_delimiter must be" in _refused(tmp_path, text)
    for bad in ("", "a@example.net", "exa mple.net"):
        assert "users.local_domains" in _refused(tmp_path, f'[users]\nlocal_domains = ["{bad}"]\n')
    assert "unknown key 'strip_domain'" in _refused(tmp_path, "[users]\nstrip_domain = true\n")
