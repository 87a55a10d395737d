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
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
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
    sections = {"model": config.model, "thresholds": config.thresholds}
    for name, table in data.items():
        if name not in sections or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{name}]")
        _apply(sections[name], table, f"{path}: [{name}]")
    if config.thresholds.reject < config.thresholds.add_header:
        raise ConfigError(f"{path}: thresholds.reject must be >= thresholds.add_header")
    config.source = str(path)
    return config


def _apply(target: object, table: dict, where: str) -> None:
    types = {f.name: f.type for f in fields(target)}
    for key, value in table.items():
        if key not in types:
            raise ConfigError(f"{where} unknown key {key!r}")
        want = types[key]
        if want == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif want == "str" and isinstance(value, str):
            pass
        else:
            raise ConfigError(f"{where} {key} must be a {want}, got {value!r}")
        setattr(target, key, value)
