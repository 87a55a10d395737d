"""Learns waiting for the shared store: a bounded JSON-lines file.

While Redis is down a click must not be lost, and must not block the mail
client either: it is appended here (flock, fsync) and replayed once Redis
answers again.  Each line holds what the learn needs without the message
(slots and values of its features, the site's log-odds at the time, the
class), so replaying does not depend on the parser or the model of the day.
The file is bounded (``[store] queue_max`` learns): when full, a learn is
refused with an error the caller reports, never dropped silently.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import StoreError

log = logging.getLogger("mailsift.store")


@dataclass
class QueuedLearn:
    user: str
    space: str
    slots: np.ndarray
    values: np.ndarray
    site_log_odds: float
    spam: bool | None
    forget: bool
    digest: bytes
    #: when the click was made (``time.time()``; 0: a line queued before
    #: clicks had a time): a replay never overrides a newer click with it
    at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(
            {
                "user": self.user,
                "space": self.space,
                "slots": base64.b64encode(self.slots.astype("<u4").tobytes()).decode(),
                "values": base64.b64encode(self.values.astype("<f4").tobytes()).decode(),
                "site": self.site_log_odds,
                "spam": self.spam,
                "forget": self.forget,
                "digest": self.digest.hex(),
                "at": self.at,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> QueuedLearn:
        d = json.loads(line)
        item = cls(
            str(d["user"]),
            str(d["space"]),
            np.frombuffer(base64.b64decode(d["slots"]), dtype="<u4").astype(np.uint32),
            np.frombuffer(base64.b64decode(d["values"]), dtype="<f4").astype(np.float32),
            float(d["site"]),
            None if d["spam"] is None else bool(d["spam"]),
            bool(d["forget"]),
            bytes.fromhex(d["digest"]),
            float(d.get("at") or 0.0),
        )
        if len(item.slots) != len(item.values):
            raise ValueError(f"{len(item.slots)} slots but {len(item.values)} values")
        return item

    def key(self) -> tuple:
        return (self.user, self.space, self.digest, self.spam, self.forget)


class LearnQueue:
    def __init__(self, path: Path, limit: int):
        self.path = Path(path)
        self.limit = limit
        self.refused = 0
        #: learns moved to :attr:`rejected_path` (unreadable, or refused by the store)
        self.rejected = 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o660)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the learn queue ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> tuple[list[QueuedLearn], list[tuple[str, str]]]:
        """The waiting learns, and the lines that cannot be read (a line torn
        by a crash mid-append, an edit by hand) with why: those never stop
        the good ones; :meth:`drain` moves them to :attr:`rejected_path`."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return [], []
        out, bad = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(QueuedLearn.from_json(line))
                except (
                    ValueError,
                    KeyError,
                    TypeError,
                    AttributeError,
                    IndexError,
                    OverflowError,
                    RecursionError,
                ) as exc:
                    bad.append((line, f"line {n}: cannot be read ({type(exc).__name__}: {exc})"))
        return out, bad

    @property
    def rejected_path(self) -> Path:
        """Where learns that can never land are kept for the operator to see
        (``<queue>.rejected``, one JSON line each with why)."""
        return self.path.with_name(self.path.name + ".rejected")

    def _reject(self, line: str, why: str) -> None:
        """Move one learn out of the way: it is kept (never dropped
        silently), logged, and counted in :attr:`rejected`."""
        self.rejected += 1
        log.error("%s: a queued learn was rejected and moved to %s: %s", self.path, self.rejected_path, why)
        record = json.dumps({"rejected_at": time.time(), "why": why, "line": line})
        try:
            with open(self.rejected_path, "a", encoding="utf-8") as fh:
                fh.write(record + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            log.error("%s: cannot keep the rejected learn (%s): %s", self.rejected_path, exc.strerror, line)

    def __len__(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                return sum(1 for line in fh if line.strip())
        except FileNotFoundError:
            return 0

    def waiting(self) -> bool:
        """Whether any learn waits (one stat, cheap enough for every message)."""
        try:
            return os.stat(self.path).st_size > 0
        except FileNotFoundError:
            return False

    def put(self, item: QueuedLearn) -> bool:
        """Append ``item``; False if the same learn is already waiting.
        Raises StoreError when the queue is full."""
        with self._locked():
            items, _ = self._read()
            if any(i.key() == item.key() for i in items):
                return False
            if len(items) >= self.limit:
                self.refused += 1
                raise StoreError(
                    f"{self.path}: {len(items)} learns already wait for the store to come back "
                    f"(store.queue_max); this one was not queued"
                )
            try:
                with open(self.path, "a+b") as fh:
                    # a line torn by a crash mid-append has no newline: end it first, or
                    # this learn would be glued to it and set aside with it
                    torn = False
                    if fh.seek(0, os.SEEK_END) > 0:
                        fh.seek(-1, os.SEEK_END)
                        torn = fh.read(1) != b"\n"
                    fh.write((("\n" if torn else "") + item.to_json() + "\n").encode("utf-8"))
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot queue the learn ({exc.strerror})") from None
        return True

    def drain(self, apply, stop_on: tuple[type[BaseException], ...] = ()) -> int:
        """Call ``apply(item)`` for each waiting learn, oldest first, and
        remove the ones it took; stops at the first that raises one of
        ``stop_on`` (the store went away, or refuses every write for now:
        the rest wait).  A line that cannot be read, or a learn whose
        ``apply`` raises anything else (the store refused that one learn: a
        key of another type, a ledger entry it cannot read; or a bug) is
        moved to :attr:`rejected_path`, so one bad learn never holds up the
        rest.
        Returns how many were applied."""
        done = 0
        with self._locked():
            items, bad = self._read()
            for line, why in bad:
                self._reject(line, why)
            taken = 0  # items[:taken] are applied or rejected
            try:
                for item in items:
                    try:
                        apply(item)
                    except stop_on:
                        break
                    except Exception as exc:  # noqa: BLE001 - one learn's trouble never blocks the rest
                        self._reject(item.to_json(), f"it cannot land ({type(exc).__name__}: {exc})")
                    else:
                        done += 1
                    taken += 1
            finally:
                if taken or bad:
                    self._rewrite(items[taken:])
        return done

    def _rewrite(self, items: list[QueuedLearn]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".mailsift-queue-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.writelines(i.to_json() + "\n" for i in items)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
