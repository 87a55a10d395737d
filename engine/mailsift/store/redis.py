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

Per message scored: one round trip (HMGET of the message's slots, HMGET of
the lists and counts, written together).  Per learn: two (that read, with
the ledger entry, then the learn script).  The read is plain HMGET rather
than a script because Redis is what all nodes share, and HMGET is the
cheaper for it: 1.1 ms of Redis CPU for a 2,000-slot message against 7.9
ms for a Lua loop doing the same.  Its fields are laid out by numpy
(:func:`_hmget_command`), not one by one by redis-py, and hiredis parses
the reply.  The learn script applies the change only if the ledger entry is
still the one the read saw (compare-and-set, retried by the caller) and adds
the increments inside Redis, so two nodes learning at once never lose an
update and the same message clicked on two nodes is learned once.

Outages: every command has ``[store] timeout`` (default 0.25 s, at most 0.3)
for connecting and for each reply, and no retries; after a failure the store
is marked down and not asked again for ``retry_every`` seconds (each message
then costs nothing waiting): with a hung Redis or Cluster node, one message
per ``retry_every`` waits one timeout (measured 0.253 s at 0.25), the others
none.  Only before the first connection ever succeeds does a Cluster probe
cost one timeout per hung startup node (redis-py asks them in turn).  While
down, scores use the last values read for the user's slots (a bounded
in-process cache); learns raise
StoreUnavailable so the caller queues them (``store.queue``).  The outage is
logged once when it starts and once when it ends, and counted
(:meth:`status`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..rules.lists import AddressLists
from ..usermodel import EMPTY, Change, Entry
from . import StoreBusy, StoreError, StoreStatus, StoreUnavailable, UserRead, store_key

log = logging.getLogger("mailsift.store")

#: the learn script: compare-and-set on the ledger entry, then add the
#: increments slot by slot (a slot whose sums return to zero is deleted)
_LEARN = f"""
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if not cur then cur = '' end
if cur ~= ARGV[2] then return {{0, cur}} end
local slots, ds, da = ARGV[4], ARGV[5], ARGV[6]
local n = #slots / 4
local i = 0
while i < n do
  local j = math.min(i + 1000, n)
  local fields = {{}}
  for k = i, j - 1 do fields[#fields + 1] = string.sub(slots, k * 4 + 1, k * 4 + 4) end
  local got = redis.call('HMGET', KEYS[1], unpack(fields))
  local set, del = {{}}, {{}}
  for k = 1, #fields do
    local s, a = 0, 0
    if got[k] then s, a = struct.unpack('<dd', got[k]) end
    s = s + struct.unpack('<d', ds, (i + k - 1) * 8 + 1)
    a = a + struct.unpack('<d', da, (i + k - 1) * 8 + 1)
    if a < {EMPTY!r} and math.abs(s) < {EMPTY!r} then
      if got[k] then del[#del + 1] = fields[k] end
    else
      set[#set + 1] = fields[k]
      set[#set + 1] = struct.pack('<dd', s, a)
    end
  end
  if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
  if #del > 0 then redis.call('HDEL', KEYS[1], unpack(del)) end
  i = j
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
        import redis.exceptions

        self._refused = redis.exceptions.RedisError

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
                self._script = client.register_script(_LEARN)
                self._client = client
            result = fn(self._client)
        except self._errors as exc:
            self._failed(exc)
            raise StoreUnavailable(f"redis {self._status.where}: {type(exc).__name__}: {exc}") from None
        except self._refused as exc:  # answered, but refused (permissions, a key of another type)
            with self._lock:
                self._status.errors += 1
                self._status.last_error = f"{type(exc).__name__}: {exc}"
            if _passing(exc):  # every write refused for now: wait as in an outage
                raise StoreBusy(f"redis {self._status.where} refuses writes for now: {exc}") from None
            raise StoreError(f"redis {self._status.where} refused: {exc}") from None
        recovered = False
        with self._lock:
            self._status.answered_at = time.monotonic()
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

    # -- keys ----------------------------------------------------------------
    def _keys(self, user: str, space: str) -> tuple[str, str, str]:
        if not space.isalnum():
            raise StoreError(f"feature space {space!r} must be letters and digits")
        tag = f"{self.prefix}:{{{store_key(user)}}}"
        return f"{tag}:d:{space}", f"{tag}:l:{space}", f"{tag}:m"

    # -- reading -------------------------------------------------------------
    def read(self, user: str, space: str, slots: np.ndarray, digest: bytes | None = None) -> UserRead:
        dkey, lkey, mkey = self._keys(user, space)
        want = np.asarray(slots, dtype="<u4")
        meta_fields = ["allow", "block", f"n_spam:{space}", f"n_ham:{space}"]
        try:
            replies = self._call(lambda c: _read(c, dkey, mkey, lkey, want, meta_fields, digest))
        except StoreUnavailable:
            if digest is not None:
                raise  # a learn must see the real ledger
            return self._stale(user, space, want)
        values, (allow, block, n_spam, n_ham), entry = replies
        sa = np.frombuffer(b"".join(v or _ZERO for v in values), dtype="<f8").reshape(-1, 2)
        lists = AddressLists.of(_json_list(allow), _json_list(block))
        n_spam, n_ham = int(n_spam or 0), int(n_ham or 0)
        self._remember(user, space, want, sa, lists, n_spam, n_ham)
        return UserRead(
            sa[:, 0].astype(np.float64),
            sa[:, 1].astype(np.float64),
            lists,
            n_spam,
            n_ham,
            _entry(entry, lkey) if digest is not None else None,
        )

    def _remember(self, user, space, slots, sa, lists, n_spam, n_ham) -> None:
        """Keep this read for an outage.  Reads are kept whole (the arrays,
        no per-slot work on the way: this runs for every message), newest
        last, at most ``cache_slots`` slots over all users; :meth:`_stale`
        looks a slot up newest-first."""
        if self.cache_slots <= 0:
            return
        with self._lock:
            key = (user, space)
            item = self._cache.pop(key, None) or {"reads": [], "size": 0}
            item["reads"].append((slots, sa))
            item["size"] += len(slots)
            item["lists"], item["n"] = lists, (n_spam, n_ham)
            self._cached_slots += len(slots)
            self._cache[key] = item
            while self._cached_slots > self.cache_slots:
                oldest_key = next(iter(self._cache))
                oldest = self._cache[oldest_key]
                if len(oldest["reads"]) > 1 or oldest_key != key:
                    dropped, _ = oldest["reads"].pop(0)
                    oldest["size"] -= len(dropped)
                    self._cached_slots -= len(dropped)
                    if not oldest["reads"]:
                        del self._cache[oldest_key]
                else:
                    break

    def _stale(self, user: str, space: str, slots: np.ndarray) -> UserRead:
        with self._lock:
            self._status.stale_reads += 1
            item = self._cache.get((user, space))
            reads = list(item["reads"]) if item else []
        s, a = np.zeros(len(slots)), np.zeros(len(slots))
        found = np.zeros(len(slots), dtype=bool)
        for known, sa in reversed(reads):
            if found.all() or not len(known):
                break
            pos = np.minimum(np.searchsorted(known, slots), len(known) - 1)
            hit = (known[pos] == slots) & ~found
            s[hit], a[hit] = sa[pos[hit], 0], sa[pos[hit], 1]
            found |= hit
        if item is None:
            return UserRead(s, a, stale=True)
        return UserRead(s, a, item["lists"], *item["n"], stale=True)

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

    def ping(self) -> None:
        """One PING: whether Redis answers now (raises StoreUnavailable if not;
        an answer ends an outage as any command does)."""
        self._call(lambda c: c.ping())

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


def _hmget_command(key: str, slots: np.ndarray) -> bytes:
    """HMGET KEY FIELD... in RESP, with every 4-byte field laid out by
    numpy: redis-py encodes each argument in Python (5 ms for a message's
    2,000 slots, measured), which would cost more than Redis does."""
    k = key.encode()
    n = len(slots)
    head = b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n%s\r\n" % (n + 2, len(k), k)
    body = np.empty((n, 10), dtype=np.uint8)
    body[:, :4] = np.frombuffer(b"$4\r\n", dtype=np.uint8)
    body[:, 4:8] = np.frombuffer(np.asarray(slots, dtype="<u4").tobytes(), dtype=np.uint8).reshape(n, 4)
    body[:, 8:] = np.frombuffer(b"\r\n", dtype=np.uint8)
    return head + body.tobytes()


def _read(client, dkey: str, mkey: str, lkey: str, slots: np.ndarray, meta_fields: list[str], digest):
    """One round trip to the node holding the user's keys: HMGET of the
    slots (packed by :func:`_hmget_command`), HMGET of the lists and counts,
    HGET of the ledger entry; written together, read in order.  A Cluster
    redirection (the slot moved) falls back to redis-py's pipeline, which
    follows it."""
    import redis.exceptions

    node_client = client
    if hasattr(client, "get_node_from_key"):  # RedisCluster: the node serving the user's slot
        node_client = client.get_node_from_key(dkey).redis_connection
        if node_client is None:
            return _read_pipeline(client, dkey, mkey, lkey, slots, meta_fields, digest)
    pool = node_client.connection_pool
    conn = pool.get_connection()
    try:
        commands = [_hmget_command(dkey, slots)] if len(slots) else []
        commands += conn.pack_commands(
            [("HMGET", mkey, *meta_fields)] + ([("HGET", lkey, digest)] if digest else [])
        )
        conn.send_packed_command(commands)
        values = conn.read_response() if len(slots) else []
        meta = conn.read_response()
        entry = conn.read_response() if digest else None
    except redis.exceptions.ResponseError:
        # an error reply (a MOVED redirection, say): the replies after it are still unread,
        # so this connection is closed, not reused; redis-py's pipeline follows redirections
        conn.disconnect()
        pool.release(conn)
        conn = None
        return _read_pipeline(client, dkey, mkey, lkey, slots, meta_fields, digest)
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse this connection
        raise
    finally:
        if conn is not None:
            pool.release(conn)
    return values, meta, entry


def _read_pipeline(client, dkey, mkey, lkey, slots, meta_fields, digest):
    raw = np.asarray(slots, dtype="<u4").tobytes()
    pipe = client.pipeline(transaction=False)
    if len(slots):
        pipe.hmget(dkey, [raw[i : i + 4] for i in range(0, len(raw), 4)])
    pipe.hmget(mkey, meta_fields)
    if digest:
        pipe.hget(lkey, digest)
    replies = pipe.execute()
    values = replies.pop(0) if len(slots) else []
    return values, replies.pop(0), replies.pop(0) if digest else None


def _entry(value, lkey: str) -> Entry | None:
    """The ledger entry as stored; StoreError (not ValueError) for one that
    cannot be read (edited by hand, another program's), so that learn is
    refused with why and a replay sets it aside instead of stopping."""
    try:
        return Entry.decode(value)
    except (ValueError, IndexError, UnicodeError) as exc:
        raise StoreError(f"corrupt ledger entry in redis {lkey} ({type(exc).__name__}: {exc})") from None


#: error codes of a Redis that refuses every write for a while (memory, a replica, a failover,
#: a load, a long script): none is about one learn, so the learn waits and is tried again
_PASSING = re.compile(r"\b(OOM|READONLY|MASTERDOWN|LOADING|BUSY|NOREPLICAS|TRYAGAIN|CLUSTERDOWN)\b")


def _passing(exc: BaseException) -> bool:
    """Whether ``exc`` (a Redis error reply) is store-wide and passing; a
    script's error carries the code inside its message, so it is looked for
    there too, not only in the exception's class."""
    import redis.exceptions as e

    passing = (e.OutOfMemoryError, e.ReadOnlyError, e.BusyLoadingError, e.MasterDownError, e.TryAgainError)
    return isinstance(exc, passing) or bool(_PASSING.search(str(exc)))


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
