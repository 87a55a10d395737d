"""One TOML configuration file; every setting has its default here.

Looked up, first found wins: ``--config FILE``, ``$MAILSIFT_CONFIG``,
``$XDG_CONFIG_HOME/mailsift/config.toml`` (``~/.config/...``), and
``/etc/mailsift/config.toml``.  No file at all is fine: the defaults apply.
Unknown keys are errors, so a typo never silently does nothing; so is every
value outside the range its field declares (``bounds``: weights > 0,
timeouts > 0, every float finite, ...) and every ``[rule_weights]`` name that
is not a rule (``rules.names``).  Errors are one line naming the file and key.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from . import bounds
from .bounds import any_finite, at_least, between, listen_address, one_of, positive
from .rules import NetworkConfig, parse_networks
from .rules.auth import AuthConfig
from .rules.lists import MAX_ENTRIES, ListsConfig, pattern_problem
from .rules.names import builtin_rule_names, is_informational, known_rule_names
from .rules.tld import DomainRules


class ConfigError(Exception):
    """The configuration file is unreadable or has a bad key or value."""


@dataclass
class ModelConfig:
    #: model file; "" means the user's own model in the XDG data dir when it
    #: exists, else the shipped default model
    path: str = ""
    #: weight of a model trained on the user's own mail
    weight: float = field(default=1.0, metadata=positive())
    #: weight of the shipped default model (or any model trained with
    #: --generic), which was not trained on this user's mail
    default_weight: float = field(default=1.75, metadata=positive())
    #: its points are clipped to +/- this: it may mark mail as spam, but never
    #: reject on its own, nor outvote strong rule evidence
    default_cap: float = field(default=7.5, metadata=positive())
    #: a model of your own gets the shipped default's points added until it
    #: has learned this many messages of each class: the default's share falls
    #: linearly from 1 to 0 (see models/default/README.md); 0 = never blend
    blend_until: int = field(default=200, metadata=at_least(0))


@dataclass
class Thresholds:
    #: score at which a message is marked spam (X-Spam-Flag: YES)
    add_header: float = field(default=5.0, metadata=any_finite())
    #: score at which the SMTP proxy rejects (if rejecting is enabled there)
    reject: float = field(default=10.0, metadata=any_finite())


@dataclass
class ProxyConfig:
    """``mailsift serve``: the SMTP content filter (see README, Postfix)."""

    #: where Postfix hands mail to us when no door is named at all (neither
    #: in [serve] nor on the command line); loopback unless you mean otherwise
    listen: str = field(default="127.0.0.1:10025", metadata=listen_address())
    #: the only place mail is ever relayed to (Postfix's re-injection port)
    relay: str = "127.0.0.1:10026"
    #: "after-queue" (content_filter) or "before-queue" (smtpd_proxy_filter)
    mode: str = field(default="after-queue", metadata=one_of("after-queue", "before-queue"))
    #: largest message accepted, in bytes (SIZE and DATA answer 552 above it)
    max_message_size: int = field(default=50 * 1024 * 1024, metadata=positive())
    #: concurrent SMTP sessions; more are told 421 and retry later
    max_sessions: int = field(default=100, metadata=positive())
    #: idle time allowed between client commands or data lines, seconds
    command_timeout: float = field(default=300.0, metadata=positive())
    #: time allowed for each command to the next hop, seconds; also what
    #: sessions in flight get to finish after SIGTERM
    relay_timeout: float = field(default=60.0, metadata=positive())
    #: time allowed for the next hop's reply at the end of DATA, seconds
    #: (RFC 5321 4.5.3.2: 10 minutes; cutting it short makes duplicates,
    #: since the next hop may still accept after we told Postfix 451)
    data_timeout: float = field(default=600.0, metadata=positive())
    #: time allowed to score one message, seconds
    scoring_deadline: float = field(default=10.0, metadata=positive())
    #: when scoring fails or times out: "pass" (relay, X-Spam-Status: Unknown)
    #: or "tempfail" (451, Postfix retries later)
    on_scoring_error: str = field(default="pass", metadata=one_of("pass", "tempfail"))
    #: after-queue: refuse mail at or above the reject threshold with 550
    #: (Postfix then bounces it) instead of passing it marked
    reject: bool = False
    #: after-queue: silently drop mail at or above the reject threshold
    discard: bool = False
    #: scoring processes; 0 = one per CPU core
    workers: int = field(default=0, metadata=at_least(0))
    #: how scoring processes are started: "forkserver" (default: they hold
    #: none of the filter's sockets), "spawn" or "fork"
    start_method: str = field(default="forkserver", metadata=one_of("forkserver", "spawn", "fork"))
    #: "text" or "json"
    log_format: str = field(default="text", metadata=one_of("text", "json"))
    #: the one switch for every door (smtp, milter, spamd, http): an address
    #: beyond loopback is refused unless this is true (anyone who can reach
    #: the SMTP door can hand mail to the next hop; the others score and learn)
    allow_non_loopback: bool = False


@dataclass
class ServeConfig:
    """``mailsift serve``: which doors listen (see README, "One service, many
    doors").  "" = that door does not listen.  When no door is named at all
    (here or on the command line) the SMTP door listens on [proxy] listen, as
    before doors existed.  Every address is loopback unless [proxy]
    allow_non_loopback is true (``check_listening``)."""

    #: SMTP content filter (Postfix content_filter / smtpd_proxy_filter)
    smtp: str = field(default="", metadata=listen_address())
    #: milter protocol (Postfix smtpd_milters, Sendmail); settings in [milter]
    milter: str = field(default="", metadata=listen_address())
    #: spamd protocol, for spamc (Exim, procmail, maildrop, Sieve scripts)
    spamd: str = field(default="", metadata=listen_address())
    #: HTTP: POST /score, /learn, /unlearn; GET /metrics, /healthz; also where
    #: ``mailsift learn`` hands messages to
    http: str = field(default="", metadata=listen_address())
    #: token for the HTTP learn endpoints (Authorization: Bearer TOKEN); needed
    #: when the HTTP door listens beyond loopback, and then on every learn call
    http_token: str = ""
    #: seconds a spamd or HTTP client may take to send its request
    request_timeout: float = field(default=30.0, metadata=positive())


@dataclass
class MilterConfig:
    """How the milter door treats mail (``smtpd_milters`` in Postfix; see
    README, Milter); where it listens is ``[serve] milter``."""

    #: when scoring fails or overruns scoring_deadline: "tempfail" (451 4.7.1,
    #: the sender retries) or "accept" (passed, X-Spam-Status: Unknown)
    on_error: str = field(default="tempfail", metadata=one_of("tempfail", "accept"))
    #: largest message scored, in bytes; the milter keeps at most this much
    max_message_size: int = field(default=50 * 1024 * 1024, metadata=positive())
    #: above max_message_size: "accept" (passed unscanned, logged and marked
    #: X-Spam-Status: Unknown) or "tempfail"
    on_oversize: str = field(default="accept", metadata=one_of("tempfail", "accept"))
    #: time allowed to score one message, seconds
    scoring_deadline: float = field(default=10.0, metadata=positive())
    #: refuse mail at or above thresholds.reject with 550 5.7.1 (else it is
    #: passed marked as spam)
    reject: bool = True
    #: idle time allowed between two milter packets, seconds (Postfix holds
    #: the connection for the whole SMTP session)
    idle_timeout: float = field(default=900.0, metadata=positive())


@dataclass
class DnsConfig:
    """The resolver shared by the network rules."""

    #: "host" or "host:port"; empty = the system's /etc/resolv.conf
    servers: list = field(default_factory=list)
    #: seconds per query
    timeout: float = field(default=1.0, metadata=positive())
    #: seconds for all network checks of one message together
    deadline: float = field(default=2.0, metadata=positive())


@dataclass
class StoreConfig:
    """``[store]``: where per-user state (learned sums, learn ledger, address
    lists) lives.  No url: local files under ``path``."""

    #: "" (local files), "redis://HOST:PORT/DB", "rediss://..." (TLS),
    #: "unix:///path/redis.sock", or "redis+cluster://HOST:PORT[,HOST:PORT]"
    #: for Redis Cluster; a password goes in the URL (redis://:PASSWORD@host)
    url: str = ""
    #: local store folder; "" = $XDG_DATA_HOME/mailsift/users
    path: str = ""
    #: Redis key prefix (several mailsift sites may share one Redis)
    prefix: str = "mailsift"
    #: seconds allowed to connect to Redis and for each reply: a Redis that
    #: does not answer in time is "down" (scoring goes on with the last known
    #: values), so a slow Redis never holds mail up for longer than this
    timeout: float = field(default=0.25, metadata=between(0.005, 0.3))
    #: while Redis is down it is asked again at most this often, seconds
    retry_every: float = field(default=1.0, metadata=between(0.05, 300))
    #: where learns wait while Redis is down; "" = $XDG_DATA_HOME/mailsift/store-queue.jsonl
    queue: str = ""
    #: at most this many learns wait; more are refused with an error
    queue_max: int = field(default=10_000, metadata=at_least(1))
    #: feature slots of last known values kept in memory for an outage
    cache_slots: int = field(default=200_000, metadata=at_least(0))


@dataclass
class UsersConfig:
    """``[users]``: how the SMTP and milter doors name the user of a message
    with one recipient, so ``alice+shop@example.net`` is alice and the name
    can match the one spamc ``-u`` or Dovecot (``%u``) give for her.  Names
    given explicitly (spamd ``User``, HTTP ``?user=``, ``--user``) are used as
    given: these rules never apply to them."""

    #: characters that each start an address extension, as Postfix's
    #: ``recipient_delimiter``: the local part is cut at the first of them
    #: (``alice+shop@x`` is ``alice@x``; not when that would leave it empty);
    #: "" keeps recipients as they are
    recipient_delimiter: str = "+"
    #: domains whose recipients are named by their local part alone
    #: (``alice@example.net`` is ``alice``, as spamc -u and Dovecot's %u name
    #: her); recipients at other domains keep theirs
    local_domains: list = field(default_factory=list)


#: a recipient_delimiter of more characters than this is a mistake
MAX_DELIMITERS = 8

STORE_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    milter: MilterConfig = field(default_factory=MilterConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    domains: DomainRules = field(default_factory=DomainRules)
    auth: AuthConfig = field(default_factory=AuthConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    lists: ListsConfig = field(default_factory=ListsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    users: UsersConfig = field(default_factory=UsersConfig)
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


def sections(config: Config) -> dict[str, object]:
    """The config's tables by their TOML name ([model], [proxy], ...): every
    field of ``Config`` that is a dataclass, so a new section is read and
    validated by adding it to ``Config``."""
    return {f.name: getattr(config, f.name) for f in fields(config) if is_dataclass(getattr(config, f.name))}


def load_config(explicit: str | None = None) -> Config:
    """The configuration from the file found (see the module docstring),
    type- and range-checked; a ConfigError names the file and the key."""
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
    tables = sections(config)
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
        if name not in tables or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{name}]")
        _apply(tables[name], table, f"{path}: [{name}]")
    try:
        validate(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    config.source = str(path)
    return config


def requested_log_format(explicit: str | None = None) -> str:
    """``[proxy] log_format`` of the config file found, read without
    checking anything else in it: ``serve`` must report an error in that
    very file in the format the admin asked for ("text" if the file cannot
    even be read)."""
    try:
        path = find_config(explicit)
        data = tomllib.loads(path.read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return "text"
    proxy = data.get("proxy")
    value = proxy.get("log_format") if isinstance(proxy, dict) else None
    return value if value in ("text", "json") else "text"


def validate(config: Config) -> None:
    """Every value in its declared range (``bounds``), then the checks that
    involve several keys; raises ConfigError naming the key.  Run on the
    loaded file and again after command-line overrides (``serve``)."""
    for name, table in sections(config).items():
        _check_bounds(table, name)
    for n, zone in enumerate(config.dnsbl, 1):
        _check_bounds(zone, f"dnsbl #{n} ({zone.name})")
    th = config.thresholds
    if th.reject < th.add_header:
        raise ConfigError(
            f"thresholds.reject ({th.reject:g}) must be >= thresholds.add_header ({th.add_header:g})"
        )
    p = config.proxy
    if split_hostport(p.relay, "proxy.relay")[1] == 0:
        raise ConfigError(f"proxy.relay needs a port to connect to (1-65535), got {p.relay!r}")
    check_listening(config)
    check_distinct({f"serve.{d}": getattr(config.serve, d) for d in DOORS if getattr(config.serve, d)})
    for server in config.dns.servers:
        port_given = ":" in server and not server.startswith("[")
        if port_given and split_hostport(server, "dns.servers entry")[1] == 0:
            raise ConfigError(f"dns.servers entry needs a port to ask (1-65535), got {server!r}")
    for key in ("trusted_networks", "internal_networks"):
        try:
            parse_networks(getattr(config.network, key))
        except ValueError as exc:
            raise ConfigError(f"network.{key}: {exc}") from None
    for key in ("trusted_authserv_ids", "trusted_arc_sealers"):
        if any(not v.strip() or any(c.isspace() for c in v.strip()) for v in getattr(config.auth, key)):
            raise ConfigError(f"auth.{key}: entries must be single non-empty names")
    for key in ("allow", "block"):
        entries = getattr(config.lists, key)
        if len(entries) > MAX_ENTRIES:
            raise ConfigError(f"lists.{key}: at most {MAX_ENTRIES} entries, got {len(entries)}")
        problem = next((pattern_problem(e) for e in entries if pattern_problem(e)), None)
        if problem:
            raise ConfigError(f"lists.{key}: {problem}")
    _check_store(config.store)
    _check_users(config.users)
    _check_dnsbl(config.dnsbl)
    _check_rule_weights(config.rule_weights, [z.name for z in config.dnsbl])


def _check_store(store: StoreConfig) -> None:
    if store.url:
        scheme, sep, rest = store.url.partition("://")
        if not sep or scheme not in STORE_SCHEMES or not rest:
            schemes = " or ".join(s + "://..." for s in STORE_SCHEMES)
            raise ConfigError(f"store.url must be {schemes}, got {scheme + sep!r}...")
    if not store.prefix or any(c in store.prefix for c in "{} "):
        raise ConfigError(f"store.prefix must be non-empty, without braces or spaces, got {store.prefix!r}")


def _check_users(users: UsersConfig) -> None:
    delim = users.recipient_delimiter
    if len(delim) > MAX_DELIMITERS or any(c in '@"\\<>' or not c.isprintable() or c.isspace() for c in delim):
        raise ConfigError(
            f"users.recipient_delimiter must be at most {MAX_DELIMITERS} printable characters, none of"
            f" '@', quotes, backslash, brackets or spaces, got {delim!r}"
        )
    for domain in users.local_domains:
        d = domain.strip().rstrip(".")
        if not d or "@" in d or any(c.isspace() or not c.isprintable() for c in d):
            raise ConfigError(f"users.local_domains: entries must be domain names, got {domain!r}")


def _check_bounds(table: object, where: str) -> None:
    for f in fields(table):
        problem = bounds.check(f, getattr(table, f.name))
        if problem:
            raise ConfigError(f"{where}.{f.name} {problem}")


_RULE_NAME_RE = re.compile(r"[A-Za-z0-9_]+")


def _check_dnsbl(zones: list) -> None:
    seen: set[str] = set()
    for n, zone in enumerate(zones, 1):
        where = f"dnsbl #{n}"
        # the name is a test name in X-Spam-Status (comma-separated) and a [rule_weights] key
        if not _RULE_NAME_RE.fullmatch(zone.name):
            raise ConfigError(f"{where}: name must be letters, digits and _, got {zone.name!r}")
        if zone.name in seen or zone.name in builtin_rule_names():
            raise ConfigError(f"{where}: name {zone.name!r} is already the name of another rule")
        seen.add(zone.name)  # codes/bitmask points were checked when the table was read (_zone)


def _check_rule_weights(weights: dict, dnsbl_names: list[str]) -> None:
    known = known_rule_names(dnsbl_names)
    for name, points in weights.items():
        if name not in known:
            priced = sorted(n for n in known if not is_informational(n))
            close = difflib.get_close_matches(name, priced, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"rule_weights.{name}: no such rule{hint}; known rules: {', '.join(priced)}")
        if not math.isfinite(points):
            raise ConfigError(f"rule_weights.{name} must be a finite number, got {points!r}")
        if is_informational(name) and points != 0:
            raise ConfigError(
                f"rule_weights.{name}: is informational (it says what was not checked) and always "
                "scores 0; remove it"
            )


#: the doors ``mailsift serve`` can open, in the order they start
DOORS = ("smtp", "milter", "spamd", "http")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only.
    A name other than localhost is not (it may resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listening(config: Config) -> None:
    """The loopback rule, the same for every door: each listening address
    (every field declared ``bounds.listen_address()``, in any section) is on
    loopback, unless ``[proxy] allow_non_loopback`` is true.  A ConfigError
    names the key and the switch."""
    if config.proxy.allow_non_loopback:
        return
    for name, table in sections(config).items():
        for f in fields(table):
            value = getattr(table, f.name)
            if not bounds.is_listen_address(f) or not value:
                continue
            host, _ = split_hostport(value, f"{name}.{f.name}")
            if not is_loopback(host):
                raise ConfigError(loopback_refusal(f"{name}.{f.name}", value))


def loopback_refusal(key: str, address: str) -> str:
    """Why ``address`` (config key ``key``) is refused: one text for every door."""
    return (
        f"{key} {address} is not a loopback address: anyone who can reach it could send mail through "
        "your next hop, or score and learn. Listen on 127.0.0.1, or set [proxy] allow_non_loopback = "
        "true (--allow-non-loopback) if a firewall lets only your MTA and clients reach it"
    )


def split_hostport(value: str, what: str = "address") -> tuple[str, int]:
    """'127.0.0.1:10025' or '[::1]:10025' -> (host, port); port 0 means any
    free port (for tests)."""
    parsed = bounds.split_address(value)
    if parsed is None:
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit():
            raise ConfigError(f"{what} {value}: port {int(port)} is out of range (0-65535)")
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    return parsed


def check_distinct(addresses: dict[str, str]) -> None:
    """Each door on its own address: a second door on one already taken
    would fail to bind after the first had started (or, with SO_REUSEPORT
    semantics elsewhere, share its connections).  ``addresses``: the key or
    flag naming it -> HOST:PORT.  Port 0 (any free port, tests) is never a clash."""
    seen: dict[tuple[str, int], str] = {}
    for key, value in addresses.items():
        host, port = split_hostport(value, key)
        if port == 0:
            continue
        spot = ("127.0.0.1" if host.lower() == "localhost" else host.lower(), port)
        if spot in seen:
            raise ConfigError(f"{seen[spot]} and {key} are both {value}: give each door its own address")
        seen[spot] = key


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
    if not ok or isinstance(spec[0], bool) or not isinstance(spec[1], str):
        raise ConfigError(f'{where} must be [points, "meaning"]')
    if not math.isfinite(spec[0]):
        raise ConfigError(f"{where} points must be a finite number, got {spec[0]!r}")


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
