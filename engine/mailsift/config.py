"""One TOML configuration file; every setting has its default here.

Looked up, first found wins: ``--config FILE``, ``$MAILSIFT_CONFIG``,
``$XDG_CONFIG_HOME/mailsift/config.toml`` (``~/.config/...``), and
``/etc/mailsift/config.toml``.  No file at all is fine: the defaults apply.
Unknown keys are errors, so a typo never silently does nothing.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .rules.auth import AuthConfig
from .rules.tld import DomainRules


class ConfigError(Exception):
    """The configuration file is unreadable or has a bad key or value."""


@dataclass
class ModelConfig:
    #: model file; "" means the user's own model in the XDG data dir when it
    #: exists, else the shipped default model
    path: str = ""
    #: weight of a model trained on the user's own mail
    weight: float = 1.0
    #: weight of the shipped default model (or any model trained with
    #: --generic), which was not trained on this user's mail
    default_weight: float = 1.75
    #: its points are clipped to +/- this: it may mark mail as spam, but never
    #: reject on its own, nor outvote strong rule evidence
    default_cap: float = 7.5


@dataclass
class Thresholds:
    #: score at which a message is marked spam (X-Spam-Flag: YES)
    add_header: float = 5.0
    #: score at which the SMTP proxy rejects (if rejecting is enabled there)
    reject: float = 10.0


@dataclass
class ProxyConfig:
    """``mailsift serve``: the SMTP content filter (see README, Postfix)."""

    #: where Postfix hands mail to us; loopback unless you mean otherwise
    listen: str = "127.0.0.1:10025"
    #: the only place mail is ever relayed to (Postfix's re-injection port)
    relay: str = "127.0.0.1:10026"
    #: "after-queue" (content_filter) or "before-queue" (smtpd_proxy_filter)
    mode: str = "after-queue"
    #: largest message accepted, in bytes (SIZE and DATA answer 552 above it)
    max_message_size: int = 50 * 1024 * 1024
    #: concurrent SMTP sessions; more are told 421 and retry later
    max_sessions: int = 100
    #: idle time allowed between client commands or data lines, seconds
    command_timeout: float = 300.0
    #: time allowed for each command to the next hop, seconds; also what
    #: sessions in flight get to finish after SIGTERM
    relay_timeout: float = 60.0
    #: time allowed for the next hop's reply at the end of DATA, seconds
    #: (RFC 5321 4.5.3.2: 10 minutes; cutting it short makes duplicates,
    #: since the next hop may still accept after we told Postfix 451)
    data_timeout: float = 600.0
    #: time allowed to score one message, seconds
    scoring_deadline: float = 10.0
    #: when scoring fails or times out: "pass" (relay, X-Spam-Status: Unknown)
    #: or "tempfail" (451, Postfix retries later)
    on_scoring_error: str = "pass"
    #: after-queue: refuse mail at or above the reject threshold with 550
    #: (Postfix then bounces it) instead of passing it marked
    reject: bool = False
    #: after-queue: silently drop mail at or above the reject threshold
    discard: bool = False
    #: scoring processes; 0 = one per CPU core
    workers: int = 0
    #: how scoring processes are started: "forkserver" (default: they hold
    #: none of the filter's sockets), "spawn" or "fork"
    start_method: str = "forkserver"
    #: "text" or "json"
    log_format: str = "text"
    #: listening beyond loopback is refused unless this is true (anyone who
    #: can reach the port can hand mail to the next hop)
    allow_non_loopback: bool = False


@dataclass
class DnsConfig:
    """The resolver shared by the network rules."""

    #: "host" or "host:port"; empty = the system's /etc/resolv.conf
    servers: list = field(default_factory=list)
    #: seconds per query
    timeout: float = 1.0
    #: seconds for all network checks of one message together
    deadline: float = 2.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    domains: DomainRules = field(default_factory=DomainRules)
    auth: AuthConfig = field(default_factory=AuthConfig)
    #: points per rule name, overriding the defaults in code (``mailsift
    #: tune`` will write these)
    rule_weights: dict = field(default_factory=dict)
    #: DNS blocklists ([[dnsbl]] tables); none by default: choose lists whose
    #: terms of use fit you (most are free only below a query volume)
    dnsbl: list = field(default_factory=list)
    source: str = ""


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mailsift" / "config.toml"


def user_model_path() -> Path:
    """Where ``train`` and ``learn`` keep the user's own model by default."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mailsift" / "model.npz"


def find_config(explicit: str | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILSIFT_CONFIG")
    if env:
        return Path(env)
    for candidate in (user_config_path(), Path("/etc/mailsift/config.toml")):
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | None = None) -> Config:
    path = find_config(explicit)
    config = Config()
    if path is None:
        return config
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    sections = {
        "model": config.model,
        "thresholds": config.thresholds,
        "proxy": config.proxy,
        "dns": config.dns,
        "domains": config.domains,
        "auth": config.auth,
    }
    for name, table in data.items():
        if name == "dnsbl" and isinstance(table, list):
            config.dnsbl = [_zone(t, f"{path}: [[dnsbl]] #{n}") for n, t in enumerate(table, 1)]
            continue
        if name == "rule_weights" and isinstance(table, dict):
            bad = [k for k, v in table.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
            if bad:
                raise ConfigError(f"{path}: [rule_weights] {bad[0]} must be a number of points")
            config.rule_weights = {k: float(v) for k, v in table.items()}
            continue
        if name not in sections or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{name}]")
        _apply(sections[name], table, f"{path}: [{name}]")
    try:
        validate(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    config.source = str(path)
    return config


def validate(config: Config) -> None:
    """Cross-field checks; raises ConfigError naming the key."""
    if config.thresholds.reject < config.thresholds.add_header:
        raise ConfigError("thresholds.reject must be >= thresholds.add_header")
    p = config.proxy
    if p.mode not in ("after-queue", "before-queue"):
        raise ConfigError(f"proxy.mode must be after-queue or before-queue, got {p.mode!r}")
    if p.on_scoring_error not in ("pass", "tempfail"):
        raise ConfigError(f"proxy.on_scoring_error must be pass or tempfail, got {p.on_scoring_error!r}")
    if p.log_format not in ("text", "json"):
        raise ConfigError(f"proxy.log_format must be text or json, got {p.log_format!r}")
    for key in ("listen", "relay"):
        split_hostport(getattr(p, key), f"proxy.{key}")
    for key in ("max_message_size", "max_sessions"):
        if getattr(p, key) <= 0:
            raise ConfigError(f"proxy.{key} must be positive")
    for key in ("command_timeout", "relay_timeout", "data_timeout", "scoring_deadline"):
        if not getattr(p, key) > 0 or getattr(p, key) == float("inf"):
            raise ConfigError(f"proxy.{key} must be a positive number of seconds")
    if p.start_method not in ("forkserver", "spawn", "fork"):
        raise ConfigError(f"proxy.start_method must be forkserver, spawn or fork, got {p.start_method!r}")
    for server in config.dns.servers:
        if ":" in server and not server.startswith("["):
            split_hostport(server, "dns.servers entry")
    if config.dns.timeout <= 0 or config.dns.deadline <= 0:
        raise ConfigError("dns.timeout and dns.deadline must be positive")


def split_hostport(value: str, what: str = "address") -> tuple[str, int]:
    """'127.0.0.1:10025' or '[::1]:10025' -> (host, port); port 0 means any
    free port (for tests)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    return host, int(port)


def _zone(table: object, where: str):
    """One [[dnsbl]] table -> rules.dnsbl.Zone, every field checked."""
    from .rules.dnsbl import Zone

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    for key in ("name", "zone"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ConfigError(f"{where}: {key} is required (a string)")
    zone = Zone(name=table["name"], zone=table["zone"].strip("."))
    rest = {k: v for k, v in table.items() if k not in ("name", "zone", "codes")}
    _apply(zone, rest, where)
    if zone.kind not in ("ip", "domain"):
        raise ConfigError(f"{where}: kind must be ip or domain, got {zone.kind!r}")
    codes = table.get("codes", {})
    if not isinstance(codes, dict):
        raise ConfigError(f'{where}: codes must be a table of "127.0.0.x" = [points, meaning]')
    for value, spec in codes.items():
        ok = isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], (int, float))
        if not ok or not isinstance(spec[1], str):
            raise ConfigError(f'{where}: codes.{value} must be [points, "meaning"]')
    zone.codes = {k: [float(v[0]), v[1]] for k, v in codes.items()}
    return zone


def _apply(target: object, table: dict, where: str) -> None:
    types = {f.name: f.type for f in fields(target)}
    for key, value in table.items():
        if key not in types:
            raise ConfigError(f"{where} unknown key {key!r}")
        want = types[key]
        if want == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif want == "int" and isinstance(value, int) and not isinstance(value, bool):
            pass
        elif want == "bool" and isinstance(value, bool):
            pass
        elif want == "str" and isinstance(value, str):
            pass
        elif want == "list" and isinstance(value, list) and all(isinstance(v, str) for v in value):
            pass
        else:
            raise ConfigError(f"{where} {key} must be a {want}, got {value!r}")
        setattr(target, key, value)
