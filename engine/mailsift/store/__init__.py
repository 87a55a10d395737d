"""Where users' state lives: their learned sums (``usermodel``), their
learn ledger and their address lists.

Two backends behind one small interface (:class:`Store`):

* ``store.local`` (the default, no ``[store] url``): one folder per user
  under ``[store] path``, files replaced atomically, read-modify-write under
  ``flock``; for one host.
* ``store.redis`` (``[store] url = "redis://..."`` or
  ``"redis+cluster://..."``): shared by every mailsift node, so a click on
  one MX host is seen by all of them on their next message.

A store knows nothing about messages or models: it reads the sums at some
slots and applies a :class:`mailsift.usermodel.Change` atomically if the
ledger entry is still what the caller saw (compare-and-set), so concurrent
learns never lose an update.  ``space`` names the feature settings of the
site model the sums belong to (slots mean nothing under other settings):
retraining the site model with other features starts users afresh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .. import usernames
from ..rules.lists import AddressLists
from ..usermodel import Change, Entry


class StoreError(Exception):
    """The store cannot do what was asked (bad user name, unwritable folder,
    learn queue full); the message says which and why."""


class StoreUnavailable(StoreError):
    """The shared store does not answer (Redis down or too slow)."""


class StoreBusy(StoreUnavailable):
    """The shared store answers but refuses every write for now (Redis
    ``OOM`` under maxmemory, ``READONLY`` replica, ``MASTERDOWN``,
    ``LOADING``, ``BUSY`` script): store-wide and passing, so a learn waits
    in the queue as in an outage instead of being set aside."""


#: the name that means the site's own learns (``[store] url`` set: site-level
#: learns are kept in the store as a delta over the site model file, exactly
#: as a user's are).  It holds a control character, which :func:`user_name`
#: refuses, so no user name (``spamc -u``, ``?user=``) can ever be it.
SITE = "\x00site"

#: the site's key in a store (a folder, a Redis hash tag).  :func:`user_key`
#: always encodes ``%``, so no user's key can be it either.
SITE_KEY = "%site"


def state_name(name: str) -> str:
    """:data:`SITE` as it is, else the user ``name`` names (:func:`user_name`)."""
    return SITE if name == SITE else user_name(name)


def store_key(name: str) -> str:
    """The key of ``name``'s state: :data:`SITE_KEY` for :data:`SITE`, else
    :func:`user_key`."""
    return SITE_KEY if name == SITE else user_key(name)


def user_name(name: str) -> str:
    """The user ``name`` names (``usernames.canonical``: surrounding blanks
    dropped, ASCII letters folded, nothing else changed); StoreError for a
    name that cannot be used (empty, too long, control characters)."""
    try:
        return usernames.canonical(name)
    except usernames.UserNameError as exc:
        raise StoreError(str(exc)) from None


def user_key(name: str) -> str:
    """The one place a store names a user's state (a folder, a Redis hash
    tag): ``usernames.key``, injective and safe as either, and unchanged for
    names of ``a-z 0-9 . _ @ + = -`` so existing state keeps its name."""
    try:
        return usernames.key(name)
    except usernames.UserNameError as exc:
        raise StoreError(str(exc)) from None


@dataclass
class UserRead:
    """What one message needs of a user's state."""

    #: the two sums at each requested slot (0 where the user has none)
    s: np.ndarray
    a: np.ndarray
    lists: AddressLists = field(default_factory=AddressLists)
    n_spam: int = 0
    n_ham: int = 0
    #: the ledger entry of the requested digest
    entry: Entry | None = None
    #: served from the last known values (the shared store did not answer)
    stale: bool = False


@dataclass
class StoreStatus:
    """Counters for a metrics door (all since the process started)."""

    backend: str
    #: where (a Redis URL without its password, or the folder)
    where: str
    #: the shared store is not answering right now
    outage: bool = False
    outages: int = 0
    #: Redis commands that failed or timed out
    errors: int = 0
    #: learns waiting in the local queue for the store to come back
    queued: int = 0
    #: learns replayed from the queue
    replayed: int = 0
    #: learns refused because the queue was full
    refused: int = 0
    #: queued learns set aside in ``<queue>.rejected`` (unreadable, or refused by the store)
    rejected: int = 0
    #: messages scored with last known values during an outage
    stale_reads: int = 0
    last_error: str = ""
    #: ``time.monotonic()`` of the last command the store answered (0: none yet)
    answered_at: float = 0.0


class Store(Protocol):
    """The interface both backends implement."""

    #: True for a store shared over the network (outages possible)
    remote: bool

    def read(self, user: str, space: str, slots: np.ndarray, digest: bytes | None = None) -> UserRead: ...

    def apply(self, user: str, space: str, change: Change) -> bool:
        """Apply ``change`` atomically if the ledger entry of its digest is
        still ``change.expected``; False if it is not (the caller re-reads
        and plans again).  Raises StoreUnavailable when the store is down."""
        ...

    def lists(self, user: str) -> AddressLists: ...

    def set_lists(self, user: str, lists: AddressLists) -> None: ...

    def status(self) -> StoreStatus: ...

    def close(self) -> None: ...


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mailsift"


def open_store(config) -> Store:
    """The store the ``[store]`` section names (``config``: the whole
    Config): Redis when ``url`` is set, else local files."""
    sc = config.store
    if sc.url:
        from .redis import RedisStore

        return RedisStore(
            sc.url,
            prefix=sc.prefix,
            timeout=sc.timeout,
            retry_every=sc.retry_every,
            cache_slots=sc.cache_slots,
        )
    from .local import LocalStore

    return LocalStore(Path(sc.path).expanduser() if sc.path else data_dir() / "users")


def queue_path(config) -> Path:
    sc = config.store
    return Path(sc.queue).expanduser() if sc.queue else data_dir() / "store-queue.jsonl"
