"""Users' state in local files: ``PATH/USER/SPACE.npz`` (sums and ledger)
and ``PATH/USER/lists.json``.

Files are replaced atomically (temporary file in the same folder, fsync,
rename), so a scorer never reads half a file; every read-modify-write holds
``flock`` on ``PATH/USER/.lock`` (a file of its own, never replaced), so
two learns at once (the service's learner and a ``mailsift learn``, or two
IMAPSieve runs) cannot lose each other's update.  ``.npz`` is read with
``allow_pickle=False``: a user-writable file cannot run code.  Reads are
cached per file and taken again when the file changes (inode, size,
mtime), so a scoring process reads a user's file once per change, not once
per message.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..rules.lists import AddressLists, pattern_problem
from ..usermodel import EMPTY, Change, Entry
from . import StoreError, StoreStatus, UserRead, store_key


@dataclass
class _State:
    """One user's sums and ledger in one feature space, as arrays."""

    slots: np.ndarray  # sorted uint32
    s: np.ndarray
    a: np.ndarray
    ledger: dict[bytes, Entry]
    n_spam: int = 0
    n_ham: int = 0

    @classmethod
    def empty(cls) -> _State:
        z = np.zeros(0)
        return cls(np.zeros(0, dtype=np.uint32), z, z.copy(), {})


class LocalStore:
    remote = False

    def __init__(self, path: Path):
        self.path = Path(path)
        self._cache: dict[Path, tuple[tuple, object]] = {}
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------
    def _dir(self, user: str) -> Path:
        return self.path / store_key(user)

    @staticmethod
    def _stamp(path: Path) -> tuple | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _cached(self, path: Path, load):
        stamp = self._stamp(path)
        if stamp is None:
            return None
        with self._lock:
            hit = self._cache.get(path)
            if hit and hit[0] == stamp:
                return hit[1]
        value = load(path)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[path] = (stamp, value)
        return value

    @contextmanager
    def _locked(self, user: str) -> Iterator[Path]:
        folder = self._dir(user)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o660)
        except OSError as exc:
            raise StoreError(f"{folder}: cannot write the user's state ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder
        finally:
            os.close(fd)

    @staticmethod
    def _write(path: Path, write) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".mailsift-", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, _file_mode(path))
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- sums and ledger -----------------------------------------------------
    def _state_path(self, user: str, space: str) -> Path:
        if not space.isalnum():
            raise StoreError(f"feature space {space!r} must be letters and digits")
        return self._dir(user) / f"{space}.npz"

    @staticmethod
    def _load(path: Path) -> _State:
        try:
            with np.load(path, allow_pickle=False) as npz:
                d = {k: npz[k] for k in npz.files}
            # ledger_at: the click times (absent in files written before they were kept: 0)
            times = d.get("ledger_at", np.zeros(len(d["ledger_g"])))
            ledger = {
                bytes(k).ljust(16, b"\0"): Entry(bool(lab), float(g), float(at))
                for k, lab, g, at in zip(
                    d["ledger_digest"], d["ledger_label"], d["ledger_g"], times, strict=True
                )
            }
            state = _State(
                d["slots"].astype(np.uint32),
                d["s"].astype(np.float64),
                d["a"].astype(np.float64),
                ledger,
                int(d["counts"][0]),
                int(d["counts"][1]),
            )
        except (OSError, KeyError, ValueError, IndexError, zipfile.BadZipFile, EOFError) as exc:
            raise StoreError(f"{path}: corrupt user state ({type(exc).__name__}: {exc})") from None
        if not (len(state.slots) == len(state.s) == len(state.a)) or (np.diff(state.slots) <= 0).any():
            raise StoreError(f"{path}: corrupt user state (slots not sorted or lengths differ)")
        return state

    def _state(self, user: str, space: str) -> _State:
        return self._cached(self._state_path(user, space), self._load) or _State.empty()

    def read(self, user: str, space: str, slots: np.ndarray, digest: bytes | None = None) -> UserRead:
        state = self._state(user, space)
        want = np.asarray(slots, dtype=np.uint32)
        s, a = np.zeros(len(want)), np.zeros(len(want))
        if len(state.slots) and len(want):
            pos = np.searchsorted(state.slots, want)
            pos_c = np.minimum(pos, len(state.slots) - 1)
            found = state.slots[pos_c] == want
            s[found] = state.s[pos_c[found]]
            a[found] = state.a[pos_c[found]]
        return UserRead(
            s,
            a,
            self.lists(user),
            state.n_spam,
            state.n_ham,
            state.ledger.get(digest) if digest is not None else None,
        )

    def apply(self, user: str, space: str, change: Change) -> bool:
        path = self._state_path(user, space)
        with self._locked(user):
            state = self._load(path) if path.exists() else _State.empty()
            if state.ledger.get(change.digest) != change.expected:
                return False
            slots = np.union1d(state.slots, change.slots.astype(np.uint32)).astype(np.uint32)
            s, a = np.zeros(len(slots)), np.zeros(len(slots))
            old = np.searchsorted(slots, state.slots)
            s[old], a[old] = state.s, state.a
            new = np.searchsorted(slots, change.slots)
            np.add.at(s, new, change.ds)
            np.add.at(a, new, change.da)
            keep = (a >= EMPTY) | (np.abs(s) >= EMPTY)
            if change.entry is None:
                state.ledger.pop(change.digest, None)
            else:
                state.ledger[change.digest] = change.entry
            digests = list(state.ledger)
            arrays = {
                "slots": slots[keep],
                "s": s[keep],
                "a": a[keep],
                "ledger_digest": np.array(digests, dtype="S16").reshape(-1),
                "ledger_label": np.array([state.ledger[d].spam for d in digests], dtype=np.int8),
                "ledger_g": np.array([state.ledger[d].g for d in digests], dtype=np.float64),
                "ledger_at": np.array([state.ledger[d].at for d in digests], dtype=np.float64),
                "counts": np.array(
                    [max(state.n_spam + change.d_spam, 0), max(state.n_ham + change.d_ham, 0)], dtype=np.int64
                ),
            }
            try:
                self._write(path, lambda fh: np.savez(fh, **arrays))
            except OSError as exc:
                raise StoreError(f"{path}: cannot write the user's state ({exc.strerror})") from None
        return True

    # -- lists ---------------------------------------------------------------
    @staticmethod
    def _load_lists(path: Path) -> AddressLists:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            allow, block = data["allow"], data["block"]
            bad = next((p for p in [*allow, *block] if pattern_problem(p)), None)
            if bad is not None:
                raise ValueError(pattern_problem(bad))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: corrupt address lists ({exc})") from None
        return AddressLists.of(allow, block)

    def lists(self, user: str) -> AddressLists:
        return self._cached(self._dir(user) / "lists.json", self._load_lists) or AddressLists()

    def set_lists(self, user: str, lists: AddressLists) -> None:
        with self._locked(user) as folder:
            text = json.dumps({"allow": list(lists.allow), "block": list(lists.block)}, indent=1)
            try:
                self._write(folder / "lists.json", lambda fh: fh.write(text.encode()))
            except OSError as exc:
                raise StoreError(f"{folder}: cannot write the address lists ({exc.strerror})") from None

    def status(self) -> StoreStatus:
        return StoreStatus("local", str(self.path))

    def close(self) -> None:
        pass


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced; a new file gets 0666 less the
    umask (mkstemp's 0600 would hide a user's state from a service running
    as another user than the ``mailsift learn`` that wrote it)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
