"""Raw message bytes (or, for format-1 models, the parsed message) -> hashed
sparse binary features.

The features of a current model (``scheme="raw"``) come from the raw bytes
alone, headers included, with no parsing, which keeps extraction near 0.1 ms
a message:

* ``4g``  byte 4-grams of the first ``ngram_bytes`` bytes: the TREC 2007
  winning recipe, robust to the spelling games spammers play with words;
* ``raw``  CRM114-style tokens (runs of printing bytes) of the same bytes;
* ``rawpair``  each such token with the next one(s) (orthogonal sparse
  bigrams, ``osb_window`` of them).

Header lines that a spam filter wrote (X-Spam-*, X-Mailsift-*, X-Rspamd-*,
X-Bogosity, X-DSPAM-*, X-Virus-* ...) are cut from the bytes first, so no
model ever learns or scores another filter's verdict; with
``receiver_headers=False`` (the portable profile) the headers the receiving
side adds (Received, Delivered-To, list headers ...) go too.  Features are
binary: every value is 1.0 (measured on trec07p-dev/train.index: binary
beat L2-normalised, see models/default/README.md).

Format-1 models (``scheme="v1"``) keep their own extraction below (content
view, decoded words, OSB pairs and tagged header tokens, L2-normalised) so a
model file written by an older mailsift still scores the same.

Hashing is deterministic (CRC-32 / fixed multiplicative mixing, never
Python's salted ``hash()``) into a fixed space of ``2**n_bits`` slots, so a
model never grows a vocabulary and a saved model means the same thing on
every machine.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import partial

import numpy as np

from .parse import ParsedMessage, decode_header, org_domain

_MASK32 = np.uint64(0xFFFFFFFF)
_SEED = {
    "4g": 0x1B873593,
    "4c": 0x2545F491,
    "word": 0x3C6EF372,
    "pair": 0x27D4EB2F,
    "hdr": 0x165667B1,
    "rawword": 0x61C88647,
    "rawpair": 0x7F4A7C15,
}
_WORD_RE = re.compile(r"[^\W_](?:[\w'.@-]{0,40}[^\W_])?|[$€£¥!?]+")
_URL_STRIP = re.compile(r"(?i)\bhttps?://\S+")


@dataclass(frozen=True)
class FeatureSettings:
    """Feature extraction settings; saved with a model, since a model's
    weights mean nothing under other settings."""

    n_bits: int = 22
    #: "raw": binary features of the raw bytes (format 2); "v1": the
    #: extraction of format-1 model files, kept so they still load and score
    scheme: str = "raw"
    #: bytes of the message (headers first) read for 4-grams and raw tokens;
    #: 6,000 beat 3,000, 4,000 and 10,000 online on trec07p-dev/train.index
    ngram_bytes: int = 6000
    #: raw tokens and their pairs ("raw" scheme; v1 models: decoded-text pairs)
    raw_tokens: bool = True
    osb_window: int = 1
    #: False cuts the headers the receiving side writes (the portable profile)
    receiver_headers: bool = True
    # -- used by the v1 scheme only --
    ngram_view: str = "content"  # "content" (sender headers + decoded text) or "raw"
    text_chars: int = 6000
    header_tokens: bool = True
    header_words: str = "none"  # words of header values, tagged by name: "none", "sender", "all"
    received_tokens: bool = False
    raw_osb: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown feature settings: {', '.join(sorted(unknown))}")
        settings = cls(**data)
        if not 10 <= settings.n_bits <= 26:
            raise ValueError(f"n_bits must be 10..26, got {settings.n_bits}")
        if settings.scheme not in ("raw", "v1"):
            raise ValueError(f"scheme must be raw or v1, got {settings.scheme!r}")
        if not 4 <= settings.ngram_bytes <= 1 << 20:
            raise ValueError(f"ngram_bytes must be 4..1048576, got {settings.ngram_bytes}")
        if not 0 <= settings.osb_window <= 8:
            raise ValueError(f"osb_window must be 0..8, got {settings.osb_window}")
        if settings.ngram_view not in ("content", "raw"):
            raise ValueError(f"ngram_view must be content or raw, got {settings.ngram_view!r}")
        if settings.header_words not in ("none", "sender", "all"):
            raise ValueError(f"header_words must be none, sender or all, got {settings.header_words!r}")
        return settings


#: Headers the sending side writes and that say something about the sender's
#: software and habits; only these are read in "sender" mode.  Left out on
#: purpose: receiver-side headers (Received, Delivered-To, list and filter
#: headers), recipients (To/Cc name the mailbox, not the sender), Date (the
#: month a corpus was collected is no spam sign) and message ids.
SENDER_HEADERS = frozenset(
    "from sender reply-to content-type mime-version x-mailer user-agent organization "
    "importance x-priority x-msmail-priority content-transfer-encoding".split()
)


def header_words(msg: ParsedMessage, which: str) -> list[str]:
    """``name:word`` tokens of header values (SpamBayes' most useful trick)."""
    out: list[str] = []
    for name, value in msg.raw_headers[:60]:
        if which == "sender" and name not in SENDER_HEADERS:
            continue
        if name == "subject":
            continue  # subject words are their own family
        for w in _WORD_RE.findall(decode_header(value[:300]).lower())[:20]:
            out.append(f"{name}:{w}")
    return out


class _Stream:
    """One family of features: the slot of each token in order, and how to
    name the token at a position (only called for evidence, so it can be
    slow)."""

    __slots__ = ("slots", "namer")

    def __init__(self, slots: np.ndarray, namer: Callable[[int], str]):
        self.slots = slots
        self.namer = namer


@dataclass
class Features:
    """Sorted unique feature slots of one message and their values (the
    vector has unit length), plus what is needed to name any slot again (for
    the evidence in a verdict)."""

    indices: np.ndarray
    values: np.ndarray
    #: the streams, or a function that makes them: naming is only needed
    #: for evidence, so a verdict without evidence never builds them
    _streams: list[_Stream] | Callable[[], list[_Stream]] = field(repr=False)

    @property
    def streams(self) -> list[_Stream]:
        if callable(self._streams):
            self._streams = self._streams()
        return self._streams

    @property
    def vec(self) -> tuple[np.ndarray, np.ndarray]:
        return self.indices, self.values

    def names(self, wanted: np.ndarray) -> dict[int, str]:
        """Readable name for each wanted slot (tokens of several families may
        share a slot; each family's first such token is named)."""
        out: dict[int, str] = {}
        for slot in (int(s) for s in wanted):
            labels = []
            for st in self.streams:
                pos = np.flatnonzero(st.slots == slot)
                if len(pos):
                    labels.append(st.namer(int(pos[0])))
            out[slot] = " | ".join(dict.fromkeys(labels)) or f"slot:{slot}"
        return out


def _pair_at(pos: int, n: int) -> tuple[int, int]:
    """(first token index, distance) of the pos-th OSB pair: pairs are laid
    out by distance 1, 2, …, each run n - d long."""
    d = 1
    while pos >= n - d:
        pos -= n - d
        d += 1
    return pos, d


def _slots(values: np.ndarray, n_bits: int) -> np.ndarray:
    """Mix 32-bit values (two xorshift-multiply rounds, wrapping uint32
    arithmetic) and keep the top n_bits."""
    v = values.astype(np.uint32)
    v ^= v >> np.uint32(15)
    v *= np.uint32(0x9E3779B1)
    v ^= v >> np.uint32(13)
    v *= np.uint32(0x85EBCA6B)
    return v >> np.uint32(32 - n_bits)


def _crc(tokens: list[str], seed: int) -> np.ndarray:
    return np.fromiter(
        (zlib.crc32(t.encode("utf-8", "surrogatepass"), seed) for t in tokens),
        dtype=np.uint32,
        count=len(tokens),
    )


# -- vectorised tokenising ------------------------------------------------
# A token's hash is a polynomial over its bytes, sum(b[k] * P**k) mod 2**64,
# computed for all tokens at once from prefix sums: no Python loop per token.
_P = 0x100000001B3  # odd, so invertible mod 2**64
_MAX_SPAN = 1 << 17
_POW = np.concatenate([[np.uint64(1)], np.cumprod(np.full(_MAX_SPAN - 1, _P, dtype=np.uint64))])
_INVPOW = np.concatenate(
    [[np.uint64(1)], np.cumprod(np.full(_MAX_SPAN - 1, pow(_P, -1, 1 << 64), dtype=np.uint64))]
)

_SEP, _WORD, _INNER, _SYMBOL = 0, 1, 2, 3
#: decoded text: letters, digits and every non-ASCII byte (so UTF-8 letters
#: stay whole) make words; ' . @ - _ join two word characters; $ ! ? runs
#: are tokens of their own ("!!!" and "$$$" are spam signs)
_TEXT_CLASS = np.zeros(256, dtype=np.int8)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
    _TEXT_CLASS[_c] = _WORD
_TEXT_CLASS[0x80:] = _WORD
for _c in b"'.@-_":
    _TEXT_CLASS[_c] = _INNER
for _c in b"$!?":
    _TEXT_CLASS[_c] = _SYMBOL
#: raw bytes: CRM114's [[:graph:]]+ (every printing byte, 8-bit included)
_RAW_CLASS = np.zeros(256, dtype=np.int8)
_RAW_CLASS[0x21:0x7F] = _WORD
_RAW_CLASS[0x80:] = _WORD


def _spans(data: bytes, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token (starts, ends) by byte class, and the byte array."""
    b = np.frombuffer(data[: _MAX_SPAN - 1], dtype=np.uint8)
    cls = table.take(b)  # take() is ~40% faster than fancy indexing here
    inner = cls == _INNER
    if inner.any():  # joiners count as word bytes only between two word bytes
        word = cls == _WORD
        ok = np.zeros(len(cls), dtype=bool)
        ok[1:-1] = word[:-2] & word[2:]
        cls = np.where(inner, np.where(ok, _WORD, _SEP), cls).astype(np.int8)
    # an edge at e: the class changes between byte e-1 and byte e (the padding
    # makes both ends edges); a token starts at an edge into a non-separator
    # and ends at the next edge
    padded = np.zeros(len(cls) + 2, dtype=np.int8)
    padded[1:-1] = cls
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    opens = padded[edges[:-1] + 1] != _SEP
    return edges[:-1][opens], edges[1:][opens], b


def _span_hashes(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, seed: int) -> np.ndarray:
    prefix = np.zeros(len(b) + 1, dtype=np.uint64)
    np.cumsum(b.astype(np.uint64) * _POW[: len(b)], out=prefix[1:])
    h = (prefix[ends] - prefix[starts]) * _INVPOW[starts]
    return ((h ^ (h >> np.uint64(32))) ^ np.uint64(seed)).astype(np.uint32)


def _osb(h: np.ndarray, window: int, seed: int) -> np.ndarray:
    """Orthogonal sparse bigrams of a token-hash sequence: each token with
    each of the next ``window`` tokens, the distance mixed into the key."""
    h = h.astype(np.uint32)
    parts = [np.zeros(0, dtype=np.uint32)]
    for d in range(1, window + 1):
        if len(h) <= d:
            break
        combined = h[:-d] * np.uint32(0x85EBCA6B) + h[d:] * np.uint32(2 * d + 1)
        combined ^= np.uint32(seed + d)
        parts.append(combined)
    return np.concatenate(parts)


def _token_streams(
    data: bytes, table: np.ndarray, tag: str, seed: int, pair_seed: int, window: int, n_bits: int
) -> list[_Stream]:
    """Tokens of ``data`` and their OSB pairs, as two streams."""
    starts, ends, b = _spans(data, table)
    h = _span_hashes(b, starts, ends, seed)

    def token(i: int) -> str:
        return data[starts[i] : ends[i]].decode("utf-8", "replace")

    def pair(pos: int) -> str:
        i, d = _pair_at(pos, len(starts))
        return f"{tag}pair:{token(i)}{' _' * (d - 1)} {token(i + d)}"

    return [
        _Stream(_slots(h, n_bits), lambda i: f"{tag}{token(i)}"),
        _Stream(_slots(_osb(h, window, pair_seed), n_bits), pair),
    ]


def content_view(msg: ParsedMessage) -> bytes:
    """The sender-controlled part of a message as one byte string: the headers
    a sender writes, then the decoded text.  Receiver-side headers (Received,
    Delivered-To, list and filter headers) are left out so a model learns the
    mail, not the mailbox it was collected in."""
    head = (
        f"From: {msg.header('from')}\nSubject: {msg.subject}\nContent-Type: {msg.header('content-type')}\n\n"
    )
    return (head + "\n".join(msg.text)).encode("utf-8", "surrogatepass")


def header_tokens(msg: ParsedMessage, received: bool = False) -> list[str]:
    """Tagged tokens from sender-side headers and message structure."""
    out: list[str] = []
    if msg.from_domain:
        out.append("from-domain:" + msg.from_domain)
        out.append("from-org:" + org_domain(msg.from_domain))
    local = msg.from_addr.rpartition("@")[0].lower()
    if local:
        out.append("from-local:" + _shape(local))
    for word in _WORD_RE.findall(msg.from_name.lower())[:6]:
        out.append("from-name:" + word)
    if msg.reply_to:
        rdom = msg.reply_to_domain
        out.append("reply-to-org:" + org_domain(rdom))
        out.append(
            "reply-to:" + ("same-org" if org_domain(rdom) == org_domain(msg.from_domain) else "other-org")
        )
    if not msg.to_addrs:
        out.append("to:none")
    else:
        out.append(f"to-count:{min(len(msg.to_addrs), 5)}")
    mid = msg.header("message-id")
    out.append("msgid-org:" + (org_domain(mid.rpartition("@")[2].strip("<> ")) if "@" in mid else "none"))
    mailer = msg.header("x-mailer") or msg.header("user-agent")
    if mailer:
        out.append("mailer:" + " ".join(_WORD_RE.findall(mailer.lower())[:2]))
    for host in msg.url_hosts[:30]:
        out.append("url-host:" + host)
        out.append("url-org:" + org_domain(host))
    n_urls = len(msg.urls)
    out.append("urls:" + ("0" if n_urls == 0 else "1-2" if n_urls < 3 else "3-9" if n_urls < 10 else "10+"))
    for ctype in dict.fromkeys(msg.mime_types):
        out.append("mime:" + ctype)
    if msg.mime_types:
        out.append("mime-top:" + msg.mime_types[0])
    if msg.html_parts and "text/plain" not in msg.mime_types:
        out.append("mime:html-only")
    for cs in dict.fromkeys(msg.charsets):
        out.append("charset:" + cs.lower())
    for name in msg.attachments[:10]:
        out.append("attach:" + name.rpartition(".")[2].lower()[:10])
    for defect in dict.fromkeys(_defect_kind(d) for d in msg.defects):
        out.append("defect:" + defect)
    if received:
        for hop in msg.received:
            if hop.from_ip:
                out.append("received-ip:" + hop.from_ip.rsplit(".", 1)[0] + ".0/24")
    return out


def _defect_kind(defect: str) -> str:
    """'mime: StartBoundaryNotFoundDefect' stays; the numbers in 'part:
    decoded first 262144 of 900000 chars' go, so like defects share a token."""
    area, _, rest = defect.partition(":")
    words = rest.split()
    return f"{area}:{words[0] if words else ''}"


def _shape(local: str) -> str:
    """Shape of an address local part: digits and letters folded, so random
    spam local parts (x7f3kq92) group together but real names stay distinct."""
    if len(local) > 12 or sum(c.isdigit() for c in local) >= 3:
        return re.sub(r"\d", "9", re.sub(r"[a-z]", "a", local))[:20]
    return local


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values; np.unique is ~40x slower on these small arrays,
    and compress() half the time of a boolean index here."""
    s = np.sort(a)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s.compress(keep)


def _binary(families: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Slots of all families -> (sorted unique slots, equal values of unit length)."""
    indices = _unique(np.concatenate(families))
    return indices, np.full(len(indices), 1.0 / np.sqrt(max(len(indices), 1)), dtype=np.float32)


def _raw_view(msg: ParsedMessage, settings: FeatureSettings) -> bytes:
    """The first ``ngram_bytes`` of the raw message (without an mbox From line)."""
    return msg.raw[msg.raw_start : msg.raw_start + settings.ngram_bytes]


def _quote(gram: str) -> str:
    """A byte gram shown in double quotes with escapes, so spaces show."""
    return '"' + repr(gram)[1:-1].replace('"', '\\"') + '"'


def _gram_stream(view: bytes, seed: int, tag: str, n_bits: int) -> _Stream:
    b = np.frombuffer(view, dtype=np.uint8).astype(np.uint32)
    if len(b) < 4:
        slots = np.zeros(0, dtype=np.uint32)
    else:
        grams = (b[:-3] << 24) | (b[1:-2] << 16) | (b[2:-1] << 8) | b[3:]
        grams ^= np.uint32(seed)
        slots = _slots(grams, n_bits)
    return _Stream(slots, lambda i: f"{tag}:" + _quote(view[i : i + 4].decode("latin-1")))


#: header names (lower-case prefixes) that spam and virus filters write: their
#: verdicts must never become features (a forged "X-Spam-Flag: NO" would
#: otherwise buy a spammer a clean score, and a model would learn its own output)
FILTER_HEADERS = (
    "x-spam",
    "x-mailsift",
    "x-rspamd",
    "x-bogosity",
    "x-dspam",
    "x-virus",
    "x-crm114",
    "x-amavis",
    "x-spambayes",
    "x-ham-report",
    "x-quarantine",
    "x-barracuda",
    "x-ironport-anti-spam",
    "x-microsoft-antispam",
    "x-forefront-antispam",
)
#: headers the receiving side writes: cut as well by the portable profile, so a
#: model learns the mail, not the mailbox it was collected in
RECEIVER_HEADERS = (
    "received",
    "delivered-to",
    "return-path",
    "x-original-to",
    "envelope-to",
    "x-envelope",
    "list-",
    "x-beenthere",
    "x-mailman",
    "x-loop",
    "precedence",
    "mailing-list",
    "x-original-date",
    "authentication-results",
    "arc-",
    "x-received",
)


def _header_cutter(names: tuple[str, ...]) -> re.Pattern[bytes]:
    alt = b"|".join(re.escape(n.encode()) for n in names)
    return re.compile(rb"(?im)^(?:" + alt + rb")[^:\n]*:[^\n]*\n(?:[ \t][^\n]*\n)*")


_CUT_FILTER = _header_cutter(FILTER_HEADERS)
_CUT_RECEIVER = _header_cutter(FILTER_HEADERS + RECEIVER_HEADERS)
#: a filter header at the start or at a line start: two scans (a lower() copy
#: and a scan per name took 7x longer; "(?:^|\n)" defeats the regex's fast
#: literal search)
_FILTER_NAMES = b"|".join(re.escape(n.encode()) for n in FILTER_HEADERS)
_FILTER_FIRST = re.compile(rb"(?:" + _FILTER_NAMES + rb")", re.I)
_FILTER_LINE = re.compile(rb"\n(?:" + _FILTER_NAMES + rb")", re.I)
#: how far past ngram_bytes the header block is searched for lines to cut
_HEAD_SLACK = 16384


def _header_end(raw: bytes, start: int, stop: int) -> int:
    r"""Offset in ``raw`` just past the line break that ends the last header
    line: where ``\r?\n\r?\n`` first matches in ``raw[start:stop]``, plus
    one for its leading ``\r`` if any and one for its ``\n``; ``stop`` if
    it does not match.  Two literal finds instead of that regex, which
    cannot skip ahead to a literal (39 us a message): its first match starts
    at, or one ``\r`` before, the first ``\n`` followed by ``\n`` or
    ``\r\n``, so either way the header ends just past that ``\n``."""
    i = raw.find(b"\n\n", start, stop)
    j = raw.find(b"\n\r\n", start, i + 2 if i >= 0 else stop)  # only one that starts before i
    if j >= 0:
        i = j
    return i + 1 if i >= 0 else stop


def raw_view(raw: bytes, settings: FeatureSettings) -> bytes:
    """The first ``ngram_bytes`` of the message as the model reads it: no
    mbox From line, no filter verdict headers (nor, with
    ``receiver_headers=False``, receiver-side headers)."""
    start = 0
    if raw.startswith(b"From "):  # an mbox separator line is the mailbox's, not the mail's
        eol = raw.find(b"\n", 0, 1000)
        start = eol + 1 if eol > 0 else 0
    stop = min(len(raw), start + settings.ngram_bytes + _HEAD_SLACK)
    cut = _header_end(raw, start, stop) - start
    if settings.receiver_headers:
        # a cheap look first, on raw itself (no copy): most mail carries no
        # filter header at all
        if not (_FILTER_FIRST.match(raw, start, start + cut) or _FILTER_LINE.search(raw, start, start + cut)):
            return raw[start : start + settings.ngram_bytes]
        cutter = _CUT_FILTER
    else:
        cutter = _CUT_RECEIVER
    chunk = raw[start:stop]
    head = cutter.sub(b"", chunk[:cut])
    if len(head) == cut:
        return chunk[: settings.ngram_bytes]
    return (head + chunk[cut:])[: settings.ngram_bytes]


#: the 4-gram at each byte offset: four bytes read as one big-endian uint32
_BE32 = np.dtype(">u4")
_M1, _M2 = np.uint32(0x9E3779B1), np.uint32(0x85EBCA6B)


def _extract_raw(raw: bytes, settings: FeatureSettings) -> Features:
    """Binary features of the raw bytes (see the module docstring), in a few
    whole-array numpy steps: every family's keys are written into one
    buffer, mixed into slots in place (the arithmetic of :func:`_slots`) and
    made unique in one sort.

    Each step is one pass over the bytes or the keys, with no temporary the
    size of the message where an ``out=`` does: numpy's per-call and
    per-copy costs were most of the time at these sizes (a few thousand
    keys).  The keys, their order and the slots are those of the plain
    version (``tests/test_fast_paths.py`` holds it and compares the two on
    corpus mail), so models and figures keep their meaning."""
    n_bits = settings.n_bits
    view = raw_view(raw, settings)
    n = len(view)
    n4 = n - 3 if n >= 4 else 0
    starts = ends = _NO_SPANS
    h = None
    sizes = [n4] if n4 else []
    if settings.raw_tokens and n:
        b = np.frombuffer(view, dtype=np.uint8)
        # CRM114's [[:graph:]]: 0x21-0x7e and every 8-bit byte (_RAW_CLASS),
        # by two compares (a table lookup converts each byte to an index first)
        padded = np.zeros(n + 2, dtype=bool)
        graph = padded[1:-1]
        np.greater(b, 0x20, out=graph)
        graph &= b != 0x7F
        edges = np.not_equal(padded[1:], padded[:-1]).nonzero()[0]
        starts, ends = edges[0::2], edges[1::2]
        prefix = np.empty(n + 1, dtype=np.uint64)
        prefix[0] = 0
        np.multiply(b, _POW[:n], out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
        hw = prefix[ends]
        hw -= prefix[starts]
        hw *= _INVPOW[starts]
        hw ^= hw >> np.uint64(32)
        h = hw.astype(np.uint32)
        sizes.append(len(h))
        sizes += [len(h) - d for d in range(1, settings.osb_window + 1) if len(h) > d]
    keys = np.empty(sum(sizes), dtype=np.uint32)
    if n4:
        grams = np.ndarray((n4,), dtype=_BE32, buffer=view, strides=(1,))
        np.bitwise_xor(grams, np.uint32(_SEED["4g"]), out=keys[:n4])
    if h is not None:
        pos = n4 + len(h)
        np.bitwise_xor(h, np.uint32(_SEED["rawword"]), out=keys[n4:pos])
        for d, size in enumerate(sizes[2 if n4 else 1 :], 1):
            out = keys[pos : pos + size]
            np.multiply(h[:-d], _M2, out=out)
            out += h[d:] * np.uint32(2 * d + 1)
            out ^= np.uint32(_SEED["rawpair"] + d)
            pos += size
    # _slots, in place: two xorshift-multiply rounds, then the top n_bits
    tmp = keys >> np.uint32(15)
    keys ^= tmp
    keys *= _M1
    np.right_shift(keys, np.uint32(13), out=tmp)
    keys ^= tmp
    keys *= _M2
    keys >>= np.uint32(32 - n_bits)
    indices = _unique(keys)
    streams = partial(_raw_streams, view, keys, sizes, starts, ends)
    return Features(indices, np.ones(len(indices), dtype=np.float32), streams)


_NO_SPANS = np.zeros(0, dtype=np.int64)


def _raw_streams(view: bytes, slots: np.ndarray, sizes: list[int], starts, ends) -> list[_Stream]:
    """Per-family views of the slots, with namers (used only for evidence)."""
    out: list[_Stream] = []
    pos = 0

    def token(i: int) -> str:
        return view[starts[i] : ends[i]].decode("utf-8", "replace")

    def pair(p: int) -> str:
        i, d = _pair_at(p, len(starts))
        return f"rawpair:{token(i)}{' _' * (d - 1)} {token(i + d)}"

    namers = [lambda i: "4g:" + _quote(view[i : i + 4].decode("latin-1"))] if len(view) >= 4 else []
    if len(starts):
        namers.append(lambda i: "raw:" + token(i))
        namers += [pair] * (len(sizes) - len(namers))
    for size, namer in zip(sizes, namers):
        out.append(_Stream(slots[pos : pos + size], namer))
        pos += size
    return out


def extract(msg: ParsedMessage, settings: FeatureSettings) -> Features:
    """All features of one parsed message (see the module docstring)."""
    if settings.scheme == "raw":
        return _extract_raw(msg.raw, settings)
    return _extract_v1(msg, settings)


def extract_bytes(raw: bytes, settings: FeatureSettings) -> Features:
    """All features of one raw message; parses it only for a v1 model, so
    training and scoring a current model never pay for parsing here."""
    if settings.scheme == "raw":
        return _extract_raw(raw, settings)
    from .parse import parse

    return _extract_v1(parse(raw), settings)


def _extract_v1(msg: ParsedMessage, settings: FeatureSettings) -> Features:
    """Features of a format-1 model (see the module docstring)."""
    n_bits = settings.n_bits
    streams: list[_Stream] = []
    # byte 4-grams of the raw message or of the decoded content
    if settings.ngram_view == "raw":
        streams.append(_gram_stream(_raw_view(msg, settings), _SEED["4g"], "4g", n_bits))
    else:
        streams.append(_gram_stream(content_view(msg)[: settings.ngram_bytes], _SEED["4c"], "4c", n_bits))
    # decoded words and their pairs
    text = "\n".join(msg.text)[: settings.text_chars].lower()
    if "://" in text:  # URLs are host tokens already; their words would only add noise
        text = _URL_STRIP.sub(" ", text)
    streams += _token_streams(
        text.encode("utf-8", "surrogatepass"),
        _TEXT_CLASS,
        "",
        _SEED["word"],
        _SEED["pair"],
        settings.osb_window,
        n_bits,
    )
    # CRM114-style tokens of the raw message, headers included, and their pairs
    if settings.raw_osb:
        streams += _token_streams(
            _raw_view(msg, settings),
            _RAW_CLASS,
            "raw:",
            _SEED["rawword"],
            _SEED["rawpair"],
            settings.osb_window,
            n_bits,
        )
    # subject words and tagged header tokens
    tagged = ["subj:" + w for w in _WORD_RE.findall(msg.subject.lower())[:30]]
    if settings.header_tokens:
        tagged += header_tokens(msg, settings.received_tokens)
    if settings.header_words != "none":
        tagged += header_words(msg, settings.header_words)
    streams.append(_Stream(_slots(_crc(tagged, _SEED["hdr"]), n_bits), tagged.__getitem__))
    indices, values = _binary([st.slots for st in streams])
    return Features(indices, values, streams)
