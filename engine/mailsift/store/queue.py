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
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import StoreError


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
    at: float = 0.0

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
                "at": self.at or time.time(),
            }
        )

    @classmethod
    def from_json(cls, line: str) -> QueuedLearn:
        d = json.loads(line)
        return cls(
            str(d["user"]),
            str(d["space"]),
            np.frombuffer(base64.b64decode(d["slots"]), dtype="<u4").astype(np.uint32),
            np.frombuffer(base64.b64decode(d["values"]), dtype="<f4").astype(np.float32),
            float(d["site"]),
            None if d["spam"] is None else bool(d["spam"]),
            bool(d["forget"]),
            bytes.fromhex(d["digest"]),
            float(d["at"]),
        )

    def key(self) -> tuple:
        return (self.user, self.space, self.digest, self.spam, self.forget)


class LearnQueue:
    def __init__(self, path: Path, limit: int):
        self.path = Path(path)
        self.limit = limit
        self.refused = 0

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

    def _read(self) -> list[QueuedLearn]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(QueuedLearn.from_json(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise StoreError(f"{self.path}:{n}: corrupt queued learn ({exc})") from None
        return out

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
            items = self._read()
            if any(i.key() == item.key() for i in items):
                return False
            if len(items) >= self.limit:
                self.refused += 1
                raise StoreError(
                    f"{self.path}: {len(items)} learns already wait for the store to come back "
                    f"(store.queue_max); this one was not queued"
                )
            try:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(item.to_json() + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot queue the learn ({exc.strerror})") from None
        return True

    def drain(self, apply, stop_on: tuple[type[BaseException], ...] = ()) -> int:
        """Call ``apply(item)`` for each waiting learn, oldest first, and
        remove the ones it took; stops at the first that raises one of
        ``stop_on`` (the store went away again: the rest wait; any other
        error propagates).  Returns how many were applied."""
        done = 0
        with self._locked():
            items = self._read()
            try:
                for item in items:
                    try:
                        apply(item)
                    except stop_on:
                        break
                    done += 1
            finally:
                if done:
                    self._rewrite(items[done:])
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
