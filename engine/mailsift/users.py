"""Per-user models and lists on top of the site model: what scoring and
learning for a user need, over any :class:`mailsift.store.Store`.

:meth:`Users.view` is the read a scorer makes per message (one store read:
the user's sums at the message's slots, and the user's lists);
:meth:`Users.learn` is a click (read with the ledger entry, plan with
``usermodel.plan``, compare-and-set in the store, re-planned if another
node changed the entry meanwhile).  When the shared store is down, a learn
is queued (``store.queue``) and replayed when it answers again; a score uses
the last known values.  Nothing here touches the site model: it is given
the site model's log-odds for the message and the message's features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import usermodel
from .config import UsersConfig
from .rules.lists import AddressLists
from .store import (
    Store,
    StoreError,
    StoreStatus,
    StoreUnavailable,
    open_store,
    queue_path,
    state_name,
    user_name,
)
from .store.queue import LearnQueue, QueuedLearn
from .usermodel import UnitVec, UserParams
from .usernames import fold

log = logging.getLogger("mailsift.users")

#: what :meth:`Users.learn` answers beyond usermodel.plan's outcomes
QUEUED = "queued"
#: what a replayed learn comes to when a later click already changed its entry
SUPERSEDED = "superseded"
#: compare-and-set attempts before a learn gives up (each is two round trips)
MAX_ATTEMPTS = 8


def feature_space(settings) -> str:
    """The name of a site model's feature settings (``FeatureSettings``):
    a user's sums are kept per space, so a site model retrained with other
    features never reads sums whose slots meant something else."""
    text = json.dumps(settings.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class UserView:
    """One user's part in one message's verdict."""

    name: str
    #: added to the site model's log-odds
    log_odds: float = 0.0
    lists: AddressLists = field(default_factory=AddressLists)
    n_spam: int = 0
    n_ham: int = 0
    #: the shared store did not answer: last known values
    stale: bool = False


class Users:
    def __init__(
        self,
        store: Store,
        params: UserParams | None = None,
        queue: LearnQueue | None = None,
        replay: bool = True,
    ):
        self.store = store
        self.params = params or UserParams()
        self.queue = queue
        #: whether this process replays queued learns (False: a scoring worker; the
        #: service replays, so what is replayed and set aside is counted where it is served)
        self.replays = replay
        self.replayed = 0
        self._replaying = threading.Lock()
        #: ``time.monotonic()`` before which a score does not start a replay: the last one
        #: stopped at a store that answers reads but refuses writes (OOM, READONLY)
        self._retry_at = 0.0
        if store.remote and queue is None:
            raise StoreError("a shared store needs a learn queue for its outages")
        if replay and hasattr(store, "on_recover"):
            store.on_recover = self._recovered

    @classmethod
    def open(cls, config, replay: bool = True) -> Users:
        """The users of the ``[store]`` section (``config``: the whole Config);
        ``replay`` False for a process that only scores (see :attr:`replays`)."""
        store = open_store(config)
        queue = LearnQueue(queue_path(config), config.store.queue_max) if store.remote else None
        return cls(store, queue=queue, replay=replay)

    # -- scoring -------------------------------------------------------------
    def view(self, user: str, vec, space: str) -> UserView:
        """``user``'s share of the verdict for a message with features
        ``vec`` (sorted unique slots, values); ``user`` ``store.SITE``: the
        site's learns kept in a shared store."""
        name = state_name(user)
        x = UnitVec.of(vec, self.params.sample)
        got = self.store.read(name, self._space(space), x.slots)
        if (
            not got.stale
            and self.replays
            and self.queue is not None
            and time.monotonic() >= self._retry_at
            and self.queue.waiting()
        ):
            # the store answers and learns wait (queued by this process or another one that
            # is gone): replay them in the background; replaying twice is harmless, the
            # ledger says already-learned
            self._recovered()
        return UserView(
            name,
            usermodel.adjustment(self.params, x, got.s, got.a),
            got.lists,
            got.n_spam,
            got.n_ham,
            got.stale,
        )

    # -- learning ------------------------------------------------------------
    def learn(
        self,
        user: str,
        vec,
        site_log_odds: float,
        spam: bool | None,
        digest: bytes,
        space: str,
        forget: bool = False,
    ) -> str:
        """Learn (``spam`` True/False) or unlearn (``forget``; ``spam`` None
        for whichever class) one message for ``user``.  Returns learned,
        already-learned, relabelled, unlearned, not-learned, other-class,
        or queued (the shared store is down; replayed when it is back).
        Raises StoreError when it can do neither (queue full, unwritable).
        ``user`` ``store.SITE`` learns for the site (a shared store's site
        delta): the same path, queue and ledger as a user's."""
        name = state_name(user)
        if spam is None and not forget:
            raise ValueError("learning needs a class: spam=True or spam=False")
        idx, val = vec
        item = QueuedLearn(
            name,
            space,
            np.asarray(idx, np.uint32),
            np.asarray(val, np.float32),
            site_log_odds,
            spam,
            forget,
            digest,
        )
        if self.queue is not None and self.queue.waiting():
            try:
                self.replay()  # older clicks first, if the store is back
            except Exception:  # a replay's trouble is the queue's, never this click's
                log.exception("replaying queued learns failed; this learn goes on")
        try:
            return self._learn(item)
        except StoreUnavailable:
            assert self.queue is not None  # only a remote store is ever unavailable
            self.queue.put(item)
            return QUEUED

    def _space(self, space: str) -> str:
        """The store's name for the sums: the site model's feature space,
        and the sampling, which changes which slots hold sums."""
        return space if self.params.sample == 1 else f"{space}s{self.params.sample}"

    def _learn(self, item: QueuedLearn, replaying: bool = False) -> str:
        """Land ``item``; ``replaying`` (it waited in the queue): SUPERSEDED
        instead if the ledger entry it would change is from a later click
        (alice clicked Junk on node A during an outage, then Not Junk on
        node B once Redis was back: A's replay must not undo B's click)."""
        x = UnitVec.of((item.slots, item.values), self.params.sample)
        space = self._space(item.space)
        for _ in range(MAX_ATTEMPTS):
            got = self.store.read(item.user, space, x.slots, item.digest)
            if replaying and got.entry is not None and got.entry.at > item.at:
                log.warning(
                    "queued learn for %r superseded: clicked at %.3f, the ledger holds a later click (%.3f)",
                    item.user,
                    item.at,
                    got.entry.at,
                )
                return SUPERSEDED
            outcome, change = usermodel.plan(
                self.params,
                x,
                item.site_log_odds,
                got.s,
                got.a,
                item.digest,
                got.entry,
                item.spam,
                item.forget,
                item.at,
            )
            if change is None or self.store.apply(item.user, space, change):
                return outcome
        raise StoreError(f"user {item.user}: the ledger entry kept changing under {MAX_ATTEMPTS} attempts")

    def replay(self) -> int:
        """Apply the queued learns the store takes now; returns how many.
        One replay at a time; a learn arriving meanwhile does not wait."""
        if self.queue is None or not self.replays or not self._replaying.acquire(blocking=False):
            return 0

        def apply(item: QueuedLearn) -> None:
            try:
                self._learn(item, replaying=True)
            except StoreUnavailable:
                self._retry_at = time.monotonic() + getattr(self.store, "retry_every", 1.0)
                raise
            self.replayed += 1  # counted as each lands, before the queue file is rewritten

        try:
            # down again, or refusing every write for now (StoreBusy: out of memory, read-only,
            # a failover): the rest wait; any other error (a key of another type, a ledger
            # entry that cannot be read, a bad name) will not pass by waiting: set aside, logged
            n = self.queue.drain(apply, stop_on=(StoreUnavailable,))
        finally:
            self._replaying.release()
        if n:
            log.warning("replayed %d queued learns", n)
        return n

    def _recovered(self) -> None:
        if self.replays and self.queue is not None and self.queue.waiting() and not self._replaying.locked():
            threading.Thread(target=self.replay, name="mailsift-replay", daemon=True).start()

    # -- lists ---------------------------------------------------------------
    def lists(self, user: str) -> AddressLists:
        return self.store.lists(user_name(user))

    def set_lists(self, user: str, lists: AddressLists) -> None:
        self.store.set_lists(user_name(user), lists)

    # -- metrics -------------------------------------------------------------
    def status(self) -> StoreStatus:
        st = self.store.status()
        if self.queue is not None:
            st.queued = len(self.queue)
            st.replayed = self.replayed
            st.refused = self.queue.refused
            st.rejected = self.queue.rejected
        return st

    def close(self) -> None:
        self.store.close()


def user_for_recipients(recipients: list[str], naming: UsersConfig | None = None) -> str | None:
    """Whose model scores a message that arrived over SMTP or the milter:
    its recipient when it has exactly one (as Rspamd does), else None (the
    site model: one verdict is written into one copy for all of them).
    Recipients are the same when they differ in ASCII case only (as user
    names: ``usernames``) or in quoting (``"alice"@x`` is ``alice@x``), and,
    by ``[users]`` (``naming``; the defaults when None), in an address
    extension (``alice+shop@x`` is ``alice@x``, so a sender cannot get past
    alice's block list and model by adding ``+x``) or in a local domain's
    name (``alice@example.net`` is ``alice``).  An address that is not a
    usable user name gives None too, never an error that would cost the
    message."""
    naming = naming or UsersConfig()
    local = {_domain(d) for d in naming.local_domains}
    delim = naming.recipient_delimiter
    addrs = {_user_of(_mailbox(r), delim, local) for r in recipients if r and r.strip("<> ")}
    if len(addrs) != 1:
        return None
    try:
        return user_name(addrs.pop())
    except StoreError:
        return None


def _domain(name: str) -> str:
    return fold(name.strip().rstrip("."))


def _user_of(mailbox: str, delimiters: str, local_domains: set[str]) -> str:
    """A mailbox as its user: the extension cut off the local part at the
    first delimiter character (as Postfix's ``recipient_delimiter``: not when
    that would leave the local part empty), and the domain dropped when it is
    one of ``local_domains``."""
    localpart, at, domain = mailbox.rpartition("@")
    if not at:
        localpart, domain = mailbox, ""
    if delimiters:
        cut = next((i for i, c in enumerate(localpart) if c in delimiters), -1)
        if cut > 0:
            localpart = localpart[:cut]
    if not at or _domain(domain) in local_domains:
        return localpart
    return f"{localpart}@{domain}"


_QUOTED_LOCAL = re.compile(r'"((?:[^"\\]|\\.)*)"@([^@]+)')


def _mailbox(recipient: str) -> str:
    """A recipient as a user name: brackets off, a quoted local part unquoted
    (RFC 5321: quoting does not change the mailbox), ASCII letters folded."""
    addr = recipient.strip().strip("<>")
    m = _QUOTED_LOCAL.fullmatch(addr)
    if m:
        addr = re.sub(r"\\(.)", r"\1", m.group(1)) + "@" + m.group(2)
    return fold(addr)
