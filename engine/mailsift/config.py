"""One TOML configuration file; every setting has its default here.

Looked up, first found wins: ``--config FILE``, ``$MAILSIFT_CONFIG``,
``$XDG_CONFIG_HOME/mailsift/config.toml`` (``~/.config/...``), and
``/etc/mailsift/config.toml``.  No file at all is fine: the defaults apply.
Unknown keys are errors, so a typo never silently does nothing.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .rules import NetworkConfig, parse_networks
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
    #: time allowed for each command to the next hop, seconds
    relay_timeout: float = 60.0
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
    #: "text" or "json"
    log_format: str = "text"


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
    network: NetworkConfig = field(default_factory=NetworkConfig)
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
        "network": config.network,
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
    for server in config.dns.servers:
        if ":" in server and not server.startswith("["):
            split_hostport(server, "dns.servers entry")
    if config.dns.timeout <= 0 or config.dns.deadline <= 0:
        raise ConfigError("dns.timeout and dns.deadline must be positive")
    if not all(map(math.isfinite, (config.dns.timeout, config.dns.deadline))):
        raise ConfigError("dns.timeout and dns.deadline must be finite")
    for key in ("trusted_networks", "internal_networks"):
        try:
            parse_networks(getattr(config.network, key))
        except ValueError as exc:
            raise ConfigError(f"network.{key}: {exc}") from None
    for key in ("trusted_authserv_ids", "trusted_arc_sealers"):
        if any(not v.strip() or any(c.isspace() for c in v.strip()) for v in getattr(config.auth, key)):
            raise ConfigError(f"auth.{key}: entries must be single non-empty names")


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
    import ipaddress

    from .rules.dnsbl import KINDS, SCOPES, Zone

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    for key in ("name", "zone"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ConfigError(f"{where}: {key} is required (a string)")
    zone = Zone(name=table["name"], zone=table["zone"].strip("."))
    rest = {k: v for k, v in table.items() if k not in ("name", "zone", "codes", "bitmask")}
    _apply(zone, rest, where)
    if zone.kind not in KINDS:
        raise ConfigError(f"{where}: kind must be ip or domain, got {zone.kind!r}")
    if "scope" in table and zone.kind != "ip":
        raise ConfigError(f"{where}: scope is for ip lists (domain lists check URL and sender domains)")
    if zone.scope not in SCOPES:
        raise ConfigError(f"{where}: scope must be last-external or all-untrusted, got {zone.scope!r}")
    if not math.isfinite(zone.score):
        raise ConfigError(f"{where}: score must be a finite number")
    for spec in zone.errors:
        try:
            net = ipaddress.ip_network(spec, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: errors entry {spec!r} is not an address or CIDR range") from None
        if net.version != 4 or not net.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
            raise ConfigError(f"{where}: errors entry {spec!r} must be inside 127.0.0.0/8")
    codes = table.get("codes", {})
    if not isinstance(codes, dict):
        raise ConfigError(f'{where}: codes must be a table of "127.0.0.x" = [points, meaning]')
    for value, spec in codes.items():
        _points_meaning(spec, f"{where}: codes.{value}")
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ConfigError(f"{where}: codes key {value!r} must be an address like 127.0.0.2") from None
    zone.codes = {k: [float(v[0]), v[1]] for k, v in codes.items()}
    bitmask = table.get("bitmask", {})
    if not isinstance(bitmask, dict):
        raise ConfigError(f'{where}: bitmask must be a table of BIT = [points, "meaning"]')
    if bitmask and codes:
        raise ConfigError(f"{where}: use codes or bitmask, not both")
    parsed = {}
    for bit, spec in bitmask.items():
        _points_meaning(spec, f"{where}: bitmask.{bit}")
        value = int(bit) if str(bit).isdigit() else 0
        if not 1 <= value <= 255 or value & (value - 1):
            raise ConfigError(f"{where}: bitmask key {bit!r} must be a power of two from 1 to 128")
        parsed[value] = [float(spec[0]), spec[1]]
    zone.bitmask = parsed
    return zone


def _points_meaning(spec: object, where: str) -> None:
    ok = isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], (int, float))
    if not ok or isinstance(spec[0], bool) or not isinstance(spec[1], str) or not math.isfinite(spec[0]):
        raise ConfigError(f'{where} must be [points, "meaning"]')


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
