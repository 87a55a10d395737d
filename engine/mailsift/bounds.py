"""The allowed range of a configuration value, declared beside its default.

A config dataclass field says what it accepts in its metadata::

    weight: float = field(default=1.0, metadata=positive())
    mode: str = field(default="after-queue", metadata=one_of("after-queue", "before-queue"))

and ``config.validate`` checks every field of every section against it, so
a new key is range-checked by declaring its range where it is defined, with
no second list to keep in step.  Every float must also be finite (TOML
accepts ``nan`` and ``inf``), declared or not.  This module imports nothing
from mailsift, so the rules' own config dataclasses can use it too.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass

_KEY = "mailsift.bound"


@dataclass(frozen=True)
class Bound:
    """A closed or open interval, or a set of choices."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself not allowed (e.g. "> 0")
    choices: tuple = ()
    #: a HOST:PORT something listens on ("" allowed: that door is off); the
    #: loopback rule (``config.check_listening``) applies to every such field
    listen: bool = False

    def problem(self, value: object) -> str | None:
        """Why ``value`` is out of range, or None if it is fine."""
        if self.listen:
            if value == "" or not isinstance(value, str):
                return None  # "" = not listening; the type check is _apply's job
            return None if split_address(value) else f"must be HOST:PORT, got {value!r}"
        if self.choices:
            if value not in self.choices:
                return "must be " + " or ".join(str(c) for c in self.choices) + f", got {value!r}"
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None  # the type check is _apply's job
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"must be {self.describe()}, got {value!r}"
        if self.high is not None and value > self.high:
            return f"must be {self.describe()}, got {value!r}"
        return None

    def describe(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"<= {self.high:g}"


def any_finite() -> dict:
    """Any finite number (thresholds, points): declared so that "no limit"
    is a decision, not an omission."""
    return {_KEY: Bound()}


def positive() -> dict:
    """> 0: weights, timeouts, sizes."""
    return {_KEY: Bound(low=0, low_open=True)}


def at_least(low: float) -> dict:
    return {_KEY: Bound(low=low)}


def between(low: float, high: float) -> dict:
    return {_KEY: Bound(low=low, high=high)}


def one_of(*choices: str) -> dict:
    return {_KEY: Bound(choices=tuple(choices))}


def listen_address() -> dict:
    """A HOST:PORT to listen on, or "" for "does not listen" (port 0 = any
    free port, for tests).  Every field declared so is one of the addresses
    the loopback rule covers: adding a door adds its address to the rule."""
    return {_KEY: Bound(listen=True)}


def split_address(value: str) -> tuple[str, int] | None:
    """'127.0.0.1:10025' or '[::1]:10025' -> (host, port); None if it is not
    HOST:PORT with a port of 0-65535."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        return None
    return host, int(port)


def check(f: Field, value: object) -> str | None:
    """Why ``value`` does not fit field ``f`` (non-finite floats included),
    or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    bound = f.metadata.get(_KEY)
    return bound.problem(value) if bound else None


def declared(f: Field) -> Bound | None:
    return f.metadata.get(_KEY)


def is_listen_address(f: Field) -> bool:
    bound = declared(f)
    return bool(bound and bound.listen)
