"""Users' state in Redis or Redis Cluster (redis-py), shared by every node.

Keys (``P`` = ``[store] prefix``, ``U`` = the user, ``F`` = the feature
space)::

    P:{U}:d:F   hash  slot (4 bytes LE) -> S, A (two float64 LE, 16 bytes)
    P:{U}:l:F   hash  digest (16 bytes) -> "label gradient" (the learn ledger)
    P:{U}:m     hash  allow, block (JSON lists), n_spam:F, n_ham:F

``{U}`` is a Redis Cluster hash tag: all of a user's keys hash to one slot,
so they live on one node, a message's read is one pipeline to that node and
a learn is one Lua script over keys of one slot (which Cluster requires).
Users spread over the nodes by their names.

Per message scored: one round trip (a pipeline of HMGET on the message's
slots and HMGET of the lists and counts).  Per learn: two (that read, with
the ledger entry, then the script).  The script applies the change only if
the ledger entry is still the one the read saw (compare-and-set, retried by
the caller) and adds the increments inside Redis, so two nodes learning at
once never lose an update and the same message clicked on two nodes is
learned once.

Outages: every command has ``[store] timeout`` (default 0.25 s, at most 0.3)
for connecting and for each reply, and no retries; after a failure the store
is marked down and not asked again for ``retry_every`` seconds (each message
then costs nothing waiting).  While down, scores use the last values read
for the user's slots (a bounded in-process cache); learns raise
StoreUnavailable so the caller queues them (``store.queue``).  The outage is
logged once when it starts and once when it ends, and counted
(:meth:`status`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..rules.lists import AddressLists
from ..usermodel import EMPTY, Change, Entry
from . import StoreError, StoreStatus, StoreUnavailable, UserRead, user_name

log = logging.getLogger("mailsift.store")

#: the learn script: compare-and-set on the ledger entry, then add the
#: increments slot by slot (a slot whose sums return to zero is deleted)
_LEARN = f"""
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not cur then cur = '' end
if cur ~= ARGV[2] then return {{0, cur}} end
local slots, ds, da = ARGV[4], ARGV[5], ARGV[6]
for i = 0, #slots / 4 - 1 do
  local f = string.sub(slots, i * 4 + 1, i * 4 + 4)
  local dsi = struct.unpack('<d', ds, i * 8 + 1)
  local dai = struct.unpack('<d', da, i * 8 + 1)
  local v = redis.call('HGET', KEYS[1], f)
  local s, a = 0, 0
  if v then s, a = struct.unpack('<dd', v) end
  s = s + dsi
  a = a + dai
  if a < {EMPTY!r} and math.abs(s) < {EMPTY!r} then
    redis.call('HDEL', KEYS[1], f)
  else
    redis.call('HSET', KEYS[1], f, struct.pack('<dd', s, a))
  end
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
if ARGV[8] ~= '0' then redis.call('HINCRBY', KEYS[3], ARGV[7], ARGV[8]) end
if ARGV[10] ~= '0' then redis.call('HINCRBY', KEYS[3], ARGV[9], ARGV[10]) end
return {{1, ''}}
"""

_ZERO = bytes(16)


def redact(url: str) -> str:
    """The URL without its password (for logs and metrics)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _connect(url: str, timeout: float):
    """A redis-py client for ``redis://``, ``rediss://``, ``unix://`` or
    ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster`` for
    TLS): no retries, ``timeout`` for connecting and for every reply."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    scheme, sep, rest = url.partition("://")
    common = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    if scheme in ("redis+cluster", "rediss+cluster"):
        from redis.cluster import ClusterNode, RedisCluster

        base = scheme.split("+")[0]
        parts = urlsplit(f"{base}://{rest}")
        hosts = [h for h in parts.netloc.rpartition("@")[2].split(",") if h]
        nodes = []
        for h in hosts:
            host, _, port = h.rpartition(":")
            nodes.append(ClusterNode(host.strip("[]") or "127.0.0.1", int(port or 6379)))
        return RedisCluster(
            startup_nodes=nodes,
            username=parts.username,
            password=parts.password,
            ssl=base == "rediss",
            **common,
        )
    if scheme not in ("redis", "rediss", "unix"):
        raise StoreError(f"store.url: scheme {scheme!r} is not redis, rediss, unix or redis+cluster")
    return redis.Redis.from_url(url, **common)


def _errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions as e

    # ResponseError is a bug or a refused command (e.g. no scripting), not an outage
    return (
        e.ConnectionError,
        e.TimeoutError,
        e.ClusterError,  # ClusterDownError, MasterDownError
        e.RedisClusterException,  # no node reachable, slot not covered
        e.TryAgainError,
        e.BusyLoadingError,
        OSError,
    )


class RedisStore:
    remote = True

    def __init__(
        self,
        url: str,
        prefix: str = "mailsift",
        timeout: float = 0.25,
        retry_every: float = 1.0,
        cache_slots: int = 200_000,
        on_recover: Callable[[], None] | None = None,
    ):
        if any(c in prefix for c in "{}") or not prefix:
            raise StoreError(f"store.prefix {prefix!r}: must be non-empty, without braces")
        self.url, self.prefix, self.timeout, self.retry_every = url, prefix, timeout, retry_every
        self.cache_slots = cache_slots
        self.on_recover = on_recover
        self._client = None
        self._script = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_since = 0.0
        self._status = StoreStatus("redis", redact(url))
        #: user -> (slot -> (s, a), lists, n_spam, n_ham): the last known values
        self._cache: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._cached_slots = 0
        self._errors = _errors()

    # -- connection and outages ----------------------------------------------
    def _call(self, fn):
        """Run ``fn(client)``; a failure marks the store down (logged once
        per outage) and raises StoreUnavailable; while down, raises at once
        until ``retry_every`` has passed."""
        now = time.monotonic()
        with self._lock:
            if self._status.outage and now < self._down_until:
                raise StoreUnavailable(f"redis {self._status.where} is down: {self._status.last_error}")
        try:
            if self._client is None:
                client = _connect(self.url, self.timeout)
                script = client.register_script(_LEARN)
                self._client, self._script = client, script
            result = fn(self._client)
        except self._errors as exc:
            self._failed(exc)
            raise StoreUnavailable(f"redis {self._status.where}: {type(exc).__name__}: {exc}") from None
        recovered = False
        with self._lock:
            if self._status.outage:
                self._status.outage = False
                recovered = True
                log.warning(
                    "redis %s answers again after %.1f s; queued learns are replayed",
                    self._status.where,
                    time.monotonic() - self._down_since,
                )
        if recovered and self.on_recover is not None:
            self.on_recover()
        return result

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._status.errors += 1
            self._status.last_error = f"{type(exc).__name__}: {exc}"
            self._down_until = time.monotonic() + self.retry_every
            if not self._status.outage:
                self._status.outage = True
                self._status.outages += 1
                self._down_since = time.monotonic()
                log.error(
                    "redis %s unreachable (%s): scoring with the last known values, queueing learns",
                    self._status.where,
                    self._status.last_error,
                )
        if self._client is not None and "Cluster" in type(self._client).__name__:
            # a cluster client keeps its view of the nodes: start over next time
            try:
                self._client.close()
            except Exception:  # closing a broken client may fail too; it is dropped anyway
                pass
            self._client = None

    # -- keys ----------------------------------------------------------------
    def _keys(self, user: str, space: str) -> tuple[str, str, str]:
        if not space.isalnum():
            raise StoreError(f"feature space {space!r} must be letters and digits")
        tag = f"{self.prefix}:{{{user_name(user)}}}"
        return f"{tag}:d:{space}", f"{tag}:l:{space}", f"{tag}:m"

    # -- reading -------------------------------------------------------------
    def read(self, user: str, space: str, slots: np.ndarray, digest: bytes | None = None) -> UserRead:
        dkey, lkey, mkey = self._keys(user, space)
        want = np.asarray(slots, dtype="<u4")
        raw = want.tobytes()
        fields = [raw[i : i + 4] for i in range(0, len(raw), 4)]
        meta_fields = ["allow", "block", f"n_spam:{space}", f"n_ham:{space}"]

        def run(client):
            pipe = client.pipeline(transaction=False)
            if fields:
                pipe.hmget(dkey, fields)
            pipe.hmget(mkey, meta_fields)
            if digest is not None:
                pipe.hget(lkey, digest)
            return pipe.execute()

        try:
            replies = self._call(run)
        except StoreUnavailable:
            if digest is not None:
                raise  # a learn must see the real ledger
            return self._stale(user, space, want)
        values = replies.pop(0) if fields else []
        meta = replies.pop(0)
        entry = Entry.decode(replies.pop(0)) if digest is not None else None
        sa = np.frombuffer(b"".join(v if v else _ZERO for v in values), dtype="<f8").reshape(-1, 2)
        lists = AddressLists.of(_json_list(meta[0]), _json_list(meta[1]))
        n_spam, n_ham = int(meta[2] or 0), int(meta[3] or 0)
        self._remember(user, space, want, sa, lists, n_spam, n_ham)
        s = sa[:, 0].astype(np.float64) if len(sa) else np.zeros(0)
        a = sa[:, 1].astype(np.float64) if len(sa) else np.zeros(0)
        return UserRead(s, a, lists, n_spam, n_ham, entry)

    def _remember(self, user, space, slots, sa, lists, n_spam, n_ham) -> None:
        if self.cache_slots <= 0:
            return
        with self._lock:
            key = (user, space)
            item = self._cache.pop(key, None) or {"slots": {}, "lists": lists, "n": (0, 0)}
            known = item["slots"]
            before = len(known)
            for slot, (s, a) in zip(slots.tolist(), sa.tolist()):
                if s or a:
                    known[slot] = (s, a)
                else:
                    known.pop(slot, None)
            item["lists"], item["n"] = lists, (n_spam, n_ham)
            self._cached_slots += len(known) - before
            self._cache[key] = item
            while self._cached_slots > self.cache_slots and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_slots -= len(old["slots"])

    def _stale(self, user: str, space: str, slots: np.ndarray) -> UserRead:
        with self._lock:
            self._status.stale_reads += 1
            item = self._cache.get((user, space))
            if item is None:
                return UserRead(np.zeros(len(slots)), np.zeros(len(slots)), stale=True)
            known = item["slots"]
            sa = np.array([known.get(int(x), (0.0, 0.0)) for x in slots], dtype=np.float64).reshape(-1, 2)
            return UserRead(sa[:, 0], sa[:, 1], item["lists"], *item["n"], stale=True)

    # -- writing -------------------------------------------------------------
    def apply(self, user: str, space: str, change: Change) -> bool:
        dkey, lkey, mkey = self._keys(user, space)
        args = [
            change.digest,
            change.expected.encode() if change.expected else "",
            change.entry.encode() if change.entry else "",
            np.asarray(change.slots, dtype="<u4").tobytes(),
            np.asarray(change.ds, dtype="<f8").tobytes(),
            np.asarray(change.da, dtype="<f8").tobytes(),
            f"n_spam:{space}",
            str(change.d_spam),
            f"n_ham:{space}",
            str(change.d_ham),
        ]
        ok, _ = self._call(lambda client: self._script(keys=[dkey, lkey, mkey], args=args, client=client))
        return bool(ok)

    def lists(self, user: str) -> AddressLists:
        _, _, mkey = self._keys(user, "x")
        allow, block = self._call(lambda c: c.hmget(mkey, ["allow", "block"]))
        return AddressLists.of(_json_list(allow), _json_list(block))

    def set_lists(self, user: str, lists: AddressLists) -> None:
        _, _, mkey = self._keys(user, "x")
        mapping = {"allow": json.dumps(list(lists.allow)), "block": json.dumps(list(lists.block))}
        self._call(lambda c: c.hset(mkey, mapping=mapping))

    def status(self) -> StoreStatus:
        with self._lock:
            return StoreStatus(**vars(self._status))

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a dead connection: nothing left to release
                pass
            self._client = None


def _json_list(value) -> list[str]:
    if not value:
        return []
    try:
        data = json.loads(value)
    except ValueError:
        raise StoreError("corrupt address list in redis (not JSON)") from None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise StoreError("corrupt address list in redis (not a list of strings)")
    return data
