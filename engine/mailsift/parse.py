"""Raw RFC 822 bytes -> :class:`ParsedMessage`.

Mail on the delivery path is hostile input: broken MIME, lying charsets, 8-bit
headers, bare CRs, megabytes of base64, markup built to make a regex
backtrack.  The parser therefore never raises, and its work is linear in what
it reads.  Whatever goes wrong is written to ``ParsedMessage.defects`` and
parsing carries on with what it has.

Every cut is applied *before* the expensive step, so one message cannot stall
a filter that scores thousands:

* only the first :data:`MAX_PARSE_BYTES` of a message are parsed (the rest is
  still delivered by the proxy, just not read for scoring);
* at most :data:`MAX_HEADER_LINES` header lines are read per entity, a header
  value is kept up to :data:`MAX_HEADER_VALUE` characters and decoded (RFC
  2047) up to :data:`MAX_HEADER_DECODE` characters and
  :data:`MAX_ENCODED_WORDS` encoded words;
* at most :data:`MAX_PARTS` MIME entities are visited, nested at most
  :data:`MAX_DEPTH` deep, and at most :data:`MAX_BOUNDARY_HITS` candidate
  boundary lines are looked at per message;
* at most :data:`MAX_PART_ENCODED` bytes of each text part's transfer encoding
  are decoded, and at most :data:`MAX_PART_TEXT` characters of its text kept;
* HTML is stripped by linear scans (no backtracking regex over unclosed
  markup), at most :data:`MAX_ENTITIES` character references and
  :data:`MAX_LINK_ATTRS` href/src attributes are looked at per message, and
  at most :data:`MAX_URLS` URLs are kept.

The MIME splitter is hand-written rather than the stdlib ``email`` parser: it
works on the bytes, decodes only text parts, and is about four times faster on
real mail, while splitting exactly as the stdlib's compat32 parser does
(same header lines, same boundary rules, same defects for the top-level
message), so features trained on the old parser still mean the same thing.
``tests/test_parse.py`` compares the two on corpus mail.  mail-parser's
Received parser, which knows many MTA formats, is used for the Received chain,
and only when a caller asks for it (:attr:`ParsedMessage.received`).
"""

from __future__ import annotations

import binascii
import codecs
import email.base64mime
import email.quoprimime
import html
import html.entities
import itertools
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

MAX_PARSE_BYTES = 512 * 1024
MAX_PARTS = 100
MAX_DEPTH = 20
MAX_BOUNDARY_HITS = 1000
MAX_HEADER_LINES = 1000
MAX_HEADER_VALUE = 32 * 1024
MAX_HEADER_DECODE = 8 * 1024
MAX_ENCODED_WORDS = 200
MAX_ADDRESS_CHARS = 2000
MAX_PART_ENCODED = 256 * 1024
MAX_PART_TEXT = 64 * 1024
MAX_SLOW_CODEC_BYTES = 2 * MAX_PART_TEXT
MAX_ENTITIES = 5_000
MAX_LINK_ATTRS = 2_000
MAX_TAGS = 30_000
MAX_RECEIVED = 12
MAX_RECEIVED_CHARS = 1000  # trec07p-dev: p99 272, max 333; mail-parser is superlinear on junk
MAX_URLS = 200

# spelled-out case instead of (?i) and a lookbehind instead of \b: a third faster
# (the lookbehind after the first letter, so the scan can skip to an h or w)
_URL_RE = re.compile(
    r"""[HhWw](?<![A-Za-z0-9.].)(?:(?<=[Hh])[Tt][Tt][Pp][Ss]?://|(?<=[Ww])[Ww][Ww]\.)"""
    r"""[^\s<>"'()\[\]{}]{2,400}"""
)
# href= / src= on lower-cased text: the name as a literal prefix (so the scan
# skips to it; the first letter alone stopped at every "s" of the text), a
# lookbehind that it does not end a longer name, the rest in a lookahead so
# that overlapping attributes are all found (neither name can overlap itself,
# so the matches start where a one-letter match did); possessive quantifiers,
# so "href=" and a long run of spaces cannot backtrack
_LINK_SCANS = tuple(
    re.compile(k + r"(?<![\w-]" + k + r""")(?=\s*+=\s*+["']?\s*+([^\s"'<>]{1,800}))""")
    for k in ("href", "src")
)
# case spelled out (with the letters re.I also folds: long s, dotted and
# dotless i) rather than re.I, so the scan can skip to each "<"
_SCRIPT_OPEN = {
    ("script", "style"): re.compile(r"<([Ssſ][Cc][Rr][Iiİı][Pp][Tt]|[Ssſ][Tt][Yy][Ll][Ee])\b"),
    ("script",): re.compile(r"<([Ssſ][Cc][Rr][Iiİı][Pp][Tt])\b"),
    ("style",): re.compile(r"<([Ssſ][Tt][Yy][Ll][Ee])\b"),
}
_SCRIPT_CLOSE = {"script": re.compile(r"</script\s*+>", re.I), "style": re.compile(r"</style\s*+>", re.I)}
_BREAK_RE = re.compile(
    r"<\s*+(?:[Bb][Rr]|/[Pp]|/[Dd][Iiİı][Vv]|/[Tt][Rr]|/[Ll][Iiİı]|/[Hh]\d|[Pp]|[Dd][Iiİı][Vv]|[Tt][Rr]|[Ll][Iiİı])"
    r"\b[^>]*+>"
)
_TAG_MAX = 2000  # a "tag" longer than this is text with a stray "<" in it
_TAG_RE = re.compile(rf"<[^>]{{0,{_TAG_MAX}}}>")
# a ">"-free run longer than a tag can be (after a ">", or at the start)
_LONG_RUN = re.compile(rf">([^>]{{{_TAG_MAX + 2},}})")
_LEADING_RUN = re.compile(rf"[^>]{{{_TAG_MAX + 2},}}")
_LONG_CHARREF = re.compile(r"&#(?:[xX][0-9a-fA-F]{9,}|[0-9]{9,});?")
# html.unescape's reference pattern, and the names it knows
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_HTML5 = html.entities.html5
_LEGACY_MAX = max(len(k) for k in _HTML5 if not k.endswith(";"))
_HOST_RE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(?:[^@/?#]*@)?([^/?#:\s\\]+)", re.I)
_IPV4_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")
_WS_RE = re.compile(r"\s+")
_CHARSET_RE = re.compile(r"""(?i)\bcharset\s*+=\s*+["']?([^"';\s]+)""")
_FILENAME_RE = re.compile(r"""(?i)\b(?:file)?name\*?\s*+=\s*+["']?([^"';]+)""")
_ANGLE_RE = re.compile(r"<(?:([^<>]*+)>\s*+$|([^<>@]*+@[^<>]*+)>)")
_COMMENT_NAME_RE = re.compile(r"\(([^()]*)\)")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
# the lookbehind starts a match only at the start of a run: without it a long
# run of word characters is scanned once per position (quadratic)
_ADDR_RE = re.compile(r"(?<![\w.+=-])[\w.+=-]+@[\w-]+(?:\.[\w-]+)+")
# the first blank line: an end of line followed by another (a CR that is half
# of a CRLF is not an end of line on its own)
_BLANK_RE = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
# a header line and its continuation lines, in a block without CR, searched
# in "\n" + block: the leading "\n" anchors each header at a line start and is
# a literal the scan can skip to (a (?m)^ is tested at every position)
_HEADER_RE = re.compile(r"\n([\x21-\x39\x3b-\x7e]++):[ \t]*+([^\n]*+(?:\n[ \t][^\n]*+)*+)")
_LINES_RE = re.compile(r"[^\r\n]*+(?:\r\n|\r|\n)|[^\r\n]++")
_SPACE_TAB = re.compile(rb"[ \t]*+")
_B64_JUNK = bytes(c for c in range(256) if not (chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/")))


@dataclass(frozen=True)
class ReceivedHop:
    """One Received header, newest first: who handed the message to whom."""

    from_host: str
    from_ip: str
    by_host: str
    raw: str


@dataclass
class ParsedMessage:
    """What the rest of mailsift reads of a message.

    ``raw_headers`` keeps every header in order, its name lower-cased and its
    value as the parser saw it; ``headers`` (decoded on first use) and
    :meth:`header` give values decoded to text (RFC 2047 words and 8-bit
    bytes both handled), so rules and features never touch ``email.message``
    objects.  Decoding is lazy because most headers are never looked at, and
    each decoded value is cached because the ones that are looked at are
    looked at several times (features, rules, report).
    """

    raw: bytes
    #: where the message proper starts in ``raw``: after an mbox "From " line
    #: if there is one, so a message scores the same with or without it
    raw_start: int = 0
    raw_headers: list[tuple[str, str]] = field(default_factory=list)
    subject: str = ""
    from_addr: str = ""
    from_name: str = ""
    reply_to: str = ""
    return_path: str = ""
    #: ``text`` and ``urls`` (see the properties): the HTML of a part is turned
    #: into text, and its URLs found, on first use (:data:`_pending`)
    _text: list[str] = field(default_factory=list)
    html_parts: int = 0
    _urls: list[str] = field(default_factory=list)
    mime_types: list[str] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    truncated: bool = False
    _decoded: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    #: text parts (is HTML, decoded text) whose text and URLs are not read yet,
    #: in message order: see :func:`_defer`
    _pending: list[tuple[bool, str]] = field(default_factory=list, repr=False, compare=False)

    @property
    def text(self) -> list[str]:
        """The decoded text of each text part, HTML turned into its visible
        text, in message order."""
        if self._pending:
            self._finish()
        return self._text

    @text.setter
    def text(self, value: list[str]) -> None:
        self._finish()
        self._text = value

    @property
    def urls(self) -> list[str]:
        """URLs of the text parts (link targets, then URLs in the text, part
        by part), at most MAX_URLS."""
        if self._pending:
            self._finish()
        return self._urls

    @urls.setter
    def urls(self, value: list[str]) -> None:
        self._finish()
        self._urls = value

    def _finish(self) -> None:
        """Read the deferred parts as the walk would have read them.  Their
        budgets cannot have run out (:func:`_defer` made sure), so a fresh
        walk's budgets read them to the same text, URLs and defects (none)."""
        pending, self._pending = self._pending, []
        if pending:
            walk = _Walk(b"", self)
            try:
                for html_part, text in pending:
                    _part_text(walk, html_part, text)
            except Exception as exc:  # a bug, not a property of the mail: keep what we have
                walk.part_defects.append(f"mime: {type(exc).__name__}")
            self.defects += walk.part_defects

    def urls_may_end_in(self, tlds: frozenset[str]) -> bool:
        """False only if no host of :attr:`url_hosts` can have its last label
        in ``tlds``: what the TLD rule asks of every message, answered
        without reading the deferred HTML when it can be (see
        :func:`_may_end_in`).  True means: read :attr:`url_hosts`."""
        if not self._pending:
            return True
        return any(_may_end_in(text, html_part, tlds) for html_part, text in self._pending) or bool(
            self._urls and _ends_in(self._urls, tlds)
        )

    @cached_property
    def headers(self) -> list[tuple[str, str]]:
        """Every header, in order: (lower-case name, decoded value)."""
        return [(key, decode_header(value)) for key, value in self.raw_headers]

    @cached_property
    def _first_raw(self) -> dict[str, str]:
        return dict(reversed(self.raw_headers))  # the first of each name wins

    def header(self, name: str) -> str:
        """First value of header ``name`` (case-insensitive), decoded, or ''."""
        name = name.lower()
        cached = self._decoded.get(name)
        if cached is None:
            value = self._first_raw.get(name)
            cached = self._decoded[name] = decode_header(value) if value is not None else ""
        return cached

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [decode_header(value) for key, value in self.raw_headers if key == name]

    @property
    def from_domain(self) -> str:
        return domain_of(self.from_addr)

    @property
    def reply_to_domain(self) -> str:
        return domain_of(self.reply_to)

    @property
    def to_domains(self) -> list[str]:
        return sorted({d for d in map(domain_of, self.to_addrs) if d})

    @cached_property
    def url_hosts(self) -> list[str]:
        """Hosts of :attr:`urls`, each once, in order (a URL repeated, as
        HTML mail repeats its links, is looked at once)."""
        return list(dict.fromkeys(h for h in map(url_host, dict.fromkeys(self.urls)) if h))

    @cached_property
    def to_addrs(self) -> list[str]:
        """Addresses in To and Cc (all To values, then all Cc values), at
        most 50.  Computed on first use: only the format-1 features read
        it, and scoring a current model never does (it was a tenth of
        parsing)."""
        first = self._first_raw
        if "to" not in first and "cc" not in first:
            return []
        # a regex, not getaddresses(): a 500-recipient Cc must not cost milliseconds
        raw = [v for k, v in self.raw_headers if k == "to"] + [v for k, v in self.raw_headers if k == "cc"]
        return _ADDR_RE.findall(" ".join(map(decode_header, raw))[:20000])[:50]

    @cached_property
    def received(self) -> list[ReceivedHop]:
        """The Received chain, newest (top) first, at most MAX_RECEIVED hops."""
        values = [v for k, v in self.raw_headers if k == "received"][:MAX_RECEIVED]
        return [_parse_received(decode_header(v[:MAX_RECEIVED_CHARS])) for v in values]


def domain_of(addr: str) -> str:
    """Lower-case domain of an address, without brackets or trailing dots."""
    _, _, dom = addr.rpartition("@")
    return dom.strip().strip("<>[]. ").lower() if dom else ""


def org_domain(domain: str) -> str:
    """Rough organizational domain (last two labels, three under a two-letter
    second level like co.uk).  Good enough for features and blocklist
    queries; authentication rules will need the Public Suffix List."""
    labels = domain.strip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


@lru_cache(maxsize=4096)
def url_host(url: str) -> str:
    """Lower-case host name of a URL (or www.-prefixed text), '' if none.
    Cached: spam repeats its links across messages, and a cache hit costs a
    tenth of the regex."""
    m = _HOST_RE.match(url.strip())
    if not m:
        return ""
    host = m.group(1).strip(".").lower()
    if not host or "." not in host or len(host) > 253:
        return ""
    return host


# -- the MIME walk ------------------------------------------------------------


class _Stop(Exception):
    """The per-message budget of entities is spent: stop the walk."""


class _Walk:
    """One message's parse: the bytes, where results go, and the budget."""

    __slots__ = (
        "data",
        "msg",
        "entities",
        "hits",
        "entities_left",
        "links_left",
        "tags_left",
        "part_defects",
        "counts",
    )

    def __init__(self, data: bytes, msg: ParsedMessage):
        self.data = data
        self.msg = msg
        self.entities = 0
        self.hits = 0  # candidate boundary lines looked at
        self.entities_left = MAX_ENTITIES  # HTML character references
        self.links_left = MAX_LINK_ATTRS  # href/src attributes
        self.tags_left = MAX_TAGS  # tags removed from HTML
        self.part_defects: list[str] = []
        #: text parts are deferred (see _defer) while the "=", "<" and "&"
        #: they hold stay below the budgets
        self.counts = [0, 0, 0]


def parse(raw: bytes) -> ParsedMessage:
    """Parse raw message bytes; never raises (defects are recorded instead)."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError(f"parse() wants bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    msg = ParsedMessage(raw=raw)
    if raw.startswith(b"From "):
        eol = raw.find(b"\n")
        msg.raw_start = eol + 1 if 0 < eol < 1000 else 0
    data = raw
    if len(data) > MAX_PARSE_BYTES:
        data = data[:MAX_PARSE_BYTES]
        msg.truncated = True
        msg.defects.append(f"truncated: parsed first {MAX_PARSE_BYTES} of {len(raw)} bytes")
    walk = _Walk(data, msg)
    top: list[str] = []  # the top-level message's defects, named as the stdlib names them
    try:
        _entity(walk, msg.raw_start, len(data), 0, "text/plain", top)
    except _Stop:
        pass
    except Exception as exc:  # a bug, not a property of the mail: keep what we have
        walk.part_defects.append(f"mime: {type(exc).__name__}")
    try:
        _read_headers(msg)
    except Exception as exc:
        msg.defects.append(f"headers: {type(exc).__name__}")
        msg.to_addrs = []  # as before to_addrs was lazy: not read when the headers failed
    msg.defects += [d if ": " in d else f"mime: {d}" for d in top]
    msg.defects += walk.part_defects
    return msg


def _read_headers(msg: ParsedMessage) -> None:
    first = msg._first_raw
    decoded = msg._decoded
    for name in ("subject", "from", "reply-to", "return-path"):
        value = first.get(name)
        decoded[name] = decode_header(value) if value is not None else ""
    msg.subject = decoded["subject"]
    msg.from_name, msg.from_addr = _address(decoded["from"])
    msg.reply_to = _address(decoded["reply-to"])[1]
    msg.return_path = _address(decoded["return-path"])[1]


def _header_block(
    data: bytes, start: int, end: int, defects: list[str] | None
) -> tuple[list[tuple[str, str]], int]:
    """(headers as (name, raw value), offset of the body) of the entity at
    ``start``.  Lines are read as the stdlib's compat32 feed parser reads them:
    a header ends at the first blank line or at the first line that is neither
    a header nor a continuation (then the body starts with that line)."""
    if start >= end:
        return [], end
    first = data[start]
    if first == 10 or first == 13:  # no headers at all: a blank first line
        return [], start + (2 if data.startswith(b"\r\n", start) else 1)
    i = data.find(b"\n\n", start, end)
    if data.find(b"\r", start, i if i >= 0 else end) < 0:  # no CR before it: the blank line
        hend, body = (i + 1, i + 2) if i >= 0 else (end, end)
    else:
        m = _BLANK_RE.search(data, start, end)
        if m:
            hend = m.start() + (2 if data.startswith(b"\r\n", m.start()) else 1)
            body = m.end()
        else:
            hend = body = end
    text = data[start:hend].decode("ascii", "surrogateescape")
    crlf = "\r" in text
    n_lines = text.count("\n") + (not text.endswith("\n"))
    if not crlf and n_lines < MAX_HEADER_LINES:
        # the common case, every line a header or its continuation: one C scan
        # finds the headers, and the count shows whether any line was neither
        pairs = _HEADER_RE.findall("\n" + text)
        if len(pairs) + text.count("\n ") + text.count("\n\t") == n_lines:
            if len(text) > MAX_HEADER_VALUE:
                pairs = [(k, v[:MAX_HEADER_VALUE]) for k, v in pairs]
            return [(k.lower(), v) for k, v in pairs], body
    if crlf:  # values keep their own line endings (raw) inside, as compat32 keeps them
        raw_lines = [m.group(0) for m in itertools.islice(_LINES_RE.finditer(text), MAX_HEADER_LINES + 1)]
        lines = [ln.rstrip("\r\n") for ln in raw_lines]
    else:
        lines = text.split("\n", MAX_HEADER_LINES + 1)
        if len(lines) <= MAX_HEADER_LINES and text.endswith("\n"):
            lines.pop()
    headers: list[tuple[str, str]] = []
    late: list[str] = []  # the stdlib finds these after the end of the block
    name = ""
    value: list[str] = []
    last = len(lines) - 1
    if last >= MAX_HEADER_LINES:
        if defects is not None:
            defects.append(f"headers: more than {MAX_HEADER_LINES} lines, rest ignored")
        lines = lines[:MAX_HEADER_LINES]
        last = len(lines) - 1
    for n, line in enumerate(lines):
        c = line[:1]
        if c == " " or c == "\t":
            if not name:
                late.append("FirstHeaderLineIsContinuationDefect")
                continue
            value.append(raw_lines[n] if crlf else line)
            continue
        colon = line.find(":")
        is_from = line.startswith("From ")
        if not is_from and (colon < 0 or (colon and not _is_field_name(line[:colon]))):
            # not a header line: the body starts here
            if defects is not None:
                defects.append("MissingHeaderBodySeparatorDefect")
            body = start + _offset_of_line(raw_lines if crlf else lines, n, crlf)
            lines = lines[:n]
            break
        if name:
            headers.append(_header(name, value, crlf))
            name, value = "", []
        if is_from:
            if n == 0:
                continue  # an envelope line
            if n == last:  # probably the first line of the body
                body = start + _offset_of_line(raw_lines if crlf else lines, n, crlf)
                break
            late.append("MisplacedEnvelopeHeaderDefect")
            continue
        if colon == 0:
            late.append("InvalidHeaderDefect")
            continue
        name = line[:colon].lower()
        value = [(raw_lines[n] if crlf else line)[colon + 1 :].lstrip(" \t")]
    if name:
        headers.append(_header(name, value, crlf))
    if defects is not None:
        defects += late
    return headers, body


def _is_field_name(name: str) -> bool:
    """Printable US-ASCII without space (or colon, which ``find`` excluded)."""
    return name.isascii() and name.isprintable() and " " not in name


def _header(name: str, value: list[str], crlf: bool) -> tuple[str, str]:
    """(name, value with its folding kept, as compat32 keeps it)."""
    text = value[0] if len(value) == 1 else ("" if crlf else "\n").join(value)
    if len(text) > MAX_HEADER_VALUE:
        text = text[:MAX_HEADER_VALUE]
    return name, text.rstrip("\r\n")


def _offset_of_line(lines: list[str], n: int, crlf: bool) -> int:
    """Offset where line ``n`` starts (rare path: only for a header block
    that ends without a blank line); CR-split lines keep their endings."""
    if not crlf:
        return sum(len(ln) + 1 for ln in lines[:n])
    return sum(len(ln) for ln in lines[:n])


def _first(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _sanitize(value: str) -> str:
    """A header value as compat32's ``get()`` shows it: 8-bit bytes (held as
    surrogates) become U+FFFD."""
    return value if value.isascii() else _SURROGATE_RE.sub("\ufffd", value)


def _content_type(value: str | None, default: str) -> str:
    if value is None:
        return default
    ctype = _sanitize(value).partition(";")[0].strip().lower()
    return ctype if ctype.count("/") == 1 else "text/plain"


def _boundary(value: str) -> str | None:
    """The boundary parameter of a Content-Type value, or None, found the way
    ``Message.get_boundary()`` finds it (quotes protect semicolons; the value
    is unquoted twice, as the stdlib does) but in one pass."""
    s = _sanitize(value[:MAX_HEADER_DECODE])
    if "boundary" not in s.lower():
        return None
    params: list[str] = []
    pos, n = 0, len(s)
    while True:
        end = s.find(";", pos)
        quotes, scan = 0, pos
        while end > pos:  # a ";" after an odd number of unescaped quotes is quoted
            quotes += s.count('"', scan, end) - s.count('\\"', scan, end)
            if quotes % 2 == 0:
                break
            scan = end
            end = s.find(";", end + 1)
        if end < 0:
            end = n
        params.append(s[pos:end])
        if end >= n:
            break
        pos = end + 1
    for p in params[1:]:
        key, eq, val = p.partition("=")
        if eq and key.strip().lower() == "boundary":
            return _unquote(_unquote(val.strip())).rstrip()
    return None


def _unquote(s: str) -> str:
    if len(s) > 1:
        if s.startswith('"') and s.endswith('"'):
            return s[1:-1].replace("\\\\", "\\").replace('\\"', '"')
        if s.startswith("<") and s.endswith(">"):
            return s[1:-1]
    return s


def _strip_eol(data: bytes, start: int, end: int) -> int:
    """``end`` moved before one line ending (the one that belongs to the
    boundary line that follows, RFC 2046)."""
    if end > start:
        c = data[end - 1]
        if c == 10:
            end -= 1
            if end > start and data[end - 1] == 13:
                end -= 1
        elif c == 13:
            end -= 1
    return end


def _entity(
    walk: _Walk, start: int, end: int, depth: int, default: str, top: list[str] | None, full_end: int = -1
) -> None:
    """Visit one MIME entity (pre-order, as ``Message.walk()`` does).
    ``top`` collects the defects of the top-level message only.

    ``full_end`` is ``end`` before the line ending that belongs to the next
    boundary was cut off.  The stdlib cuts that line ending off the payload
    of the entity's last leaf only, never off a multipart's last part (it
    cuts the multipart's epilogue instead), so a multipart body, and a
    delivery-status, is read up to ``full_end``."""
    msg = walk.msg
    if walk.entities >= MAX_PARTS:
        walk.part_defects.append(f"mime: more than {MAX_PARTS} parts, rest ignored")
        raise _Stop
    walk.entities += 1
    data = walk.data
    headers, body = _header_block(data, start, end, top)
    if depth == 0:
        msg.raw_headers = headers
        ct_value = msg._first_raw.get("content-type")
    else:
        ct_value = _first(headers, "content-type")
    ctype = _content_type(ct_value, default)
    msg.mime_types.append(ctype)
    if ctype.startswith("multipart/"):
        if depth >= MAX_DEPTH:
            walk.part_defects.append(f"mime: nesting deeper than {MAX_DEPTH}, rest ignored")
            raise _Stop
        boundary = _boundary(ct_value) if ct_value is not None else None
        if boundary is None:
            if top is not None:
                top.append("NoBoundaryInMultipartDefect")
        else:
            cte = _first(headers, "content-transfer-encoding")
            if cte is not None and _sanitize(cte).lower() not in ("7bit", "8bit", "binary"):
                if top is not None:
                    top.append("InvalidMultipartContentTransferEncodingDefect")
            if _multipart(walk, boundary, ctype, body, max(end, full_end), depth, top):
                return
        if top is not None:
            top.append("MultipartInvariantViolationDefect")
        _leaf(walk, ctype, headers, ct_value, body, end)  # a multipart without parts
        return
    if ctype.startswith("message/"):
        if depth >= MAX_DEPTH:
            walk.part_defects.append(f"mime: nesting deeper than {MAX_DEPTH}, rest ignored")
            raise _Stop
        if ctype == "message/delivery-status":
            _delivery_status(walk, body, max(end, full_end), depth)
        else:
            _entity(walk, body, end, depth + 1, "text/plain", None, full_end)
        return
    _leaf(walk, ctype, headers, ct_value, body, end)


def _multipart(
    walk: _Walk, boundary: str, ctype: str, start: int, end: int, depth: int, top: list[str] | None
) -> bool:
    """Split a multipart body on its boundary lines and visit each part;
    False if no part was found (the start boundary is missing).  The parent
    has already cut ``end`` at the first line of any enclosing boundary, so
    only this boundary is looked for, with ``bytes.find``."""
    data = walk.data
    sep = b"--" + boundary.encode("utf-8", "surrogateescape")
    lines = _boundary_lines(walk, sep, start, end)
    line = next(lines, None)
    if line is None or line[2]:  # no boundary, or only the closing one
        if top is not None:
            top.append("StartBoundaryNotFoundDefect")
        return False
    child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
    while True:
        part_start = line[1]
        nxt = next(lines, None)
        while nxt is not None and nxt[0] == part_start:  # doubled boundary lines
            part_start = nxt[1]
            nxt = next(lines, None)
        part_end = nxt[0] if nxt is not None else end
        cut = _strip_eol(data, part_start, part_end)
        _entity(walk, part_start, cut, depth + 1, child_default, None, part_end)
        if nxt is None:
            if top is not None:
                top.append("CloseBoundaryNotFoundDefect")
            return True
        if nxt[2]:
            return True
        line = nxt


def _boundary_lines(walk: _Walk, sep: bytes, start: int, end: int):
    """(line start, line end after its EOL, is closing) of each line in
    data[start:end] that is ``sep`` [``--``] [spaces/tabs] EOL."""
    data = walk.data
    pos = start
    n = len(sep)
    while True:
        i = data.find(sep, pos, end)
        if i < 0:
            return
        walk.hits += 1
        if walk.hits > MAX_BOUNDARY_HITS:
            if walk.hits == MAX_BOUNDARY_HITS + 1:
                walk.part_defects.append(f"mime: more than {MAX_BOUNDARY_HITS} boundary lines, rest ignored")
            return
        pos = i + 1
        if i != start and data[i - 1] not in (10, 13):
            continue
        j = i + n
        close = data.startswith(b"--", j) and j + 2 <= end
        if close:
            j += 2
        j = _SPACE_TAB.match(data, j, end).end()
        if j >= end:
            yield i, end, close
            return
        c = data[j]
        if c == 10:
            yield i, j + 1, close
        elif c == 13:
            yield i, j + 2 if j + 1 < end and data[j + 1] == 10 else j + 1, close
        else:
            continue
        pos = j + 1


def _delivery_status(walk: _Walk, start: int, end: int, depth: int) -> None:
    """message/delivery-status: blocks of header lines, each its own entity
    (as the stdlib makes them), separated by blank lines."""
    data = walk.data
    pos = start
    while pos < end:
        if data[pos] in (10, 13):  # a blank line where a block starts: an empty block
            _entity(walk, pos, pos, depth + 1, "text/plain", None)
            pos += 2 if data.startswith(b"\r\n", pos) else 1
            continue
        m = _BLANK_RE.search(data, pos, end)
        block_end = m.start() + (2 if data.startswith(b"\r\n", m.start()) else 1) if m else end
        _entity(walk, pos, block_end, depth + 1, "text/plain", None)
        pos = m.end() if m else end


def _leaf(walk: _Walk, ctype: str, headers: list[tuple[str, str]], ct_value, start: int, end: int) -> None:
    msg = walk.msg
    # parameters by regex: parsing every parameter each time was a third of
    # the parsing time with the stdlib's get_param()
    ct_header = _sanitize(ct_value) if ct_value is not None else ""
    ct_low = ct_header.lower()
    m = _CHARSET_RE.search(ct_header) if "char" in ct_low else None  # re.I: "charſet" too
    charset = m.group(1).lower() if m else ""
    if charset:
        msg.charsets.append(charset)
    disposition = _first(headers, "content-disposition")
    m = None
    if disposition and "name" in disposition.lower():
        m = _FILENAME_RE.search(_sanitize(disposition))
    if m is None and "name" in ct_low:
        m = _FILENAME_RE.search(ct_header)
    filename = m.group(1).strip() if m else ""
    if filename:
        msg.attachments.append(decode_header(filename)[:200])
    if not ctype.startswith("text/") or (filename and ctype not in ("text/plain", "text/html")):
        return
    payload = _decode_payload(walk, headers, start, end)
    if len(payload) > MAX_SLOW_CODEC_BYTES and not _codec((charset or "utf-8")[:100])[1]:
        # UTF-7, UTF-16, ISO-2022, EBCDIC...: slow on junk (UTF-7 at 1 us a byte)
        walk.part_defects.append(f"part: decoded first {MAX_SLOW_CODEC_BYTES} of {len(payload)} bytes")
        payload = payload[:MAX_SLOW_CODEC_BYTES]
    text = _decode_bytes(payload, charset or "utf-8")
    html_part = ctype == "text/html" or (ctype != "text/plain" and "<html" in text[:2000].lower())
    if html_part:
        msg.html_parts += 1
    if _defer(walk, html_part, text):
        return
    _part_text(walk, html_part, text)


#: character references whose text has no letter, digit or dot in any case
#: (html.unescape's table): they cannot make or end a host name
_INERT_REFS = (
    "nbsp amp quot lt gt copy reg #160 #169 #174 apos trade middot bull mdash ndash hellip "
    "laquo raquo lsquo rsquo ldquo rdquo sbquo bdquo shy times divide deg euro pound cent yen "
    "sect para iexcl iquest plusmn"
).split()  # the commonest first: the look tries them in this order at every "&"
#: an "&" that may start a reference that is not one of those (it is kept
#: as it is before a space, tab, newline, form feed, "<" or "&")
_LIVE_REF = re.compile(r"&(?!(?:" + "|".join(_INERT_REFS) + r");|[\t\n\f <&])")
#: characters after which a host name certainly goes on
_HOST_GOES_ON = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
#: characters no URL nor link target holds, and "/" that no host holds: the
#: host around a place starts after the last of them before it
_HOST_BEFORE = ("/", " ", "\n", "\t", "\r", '"', "'", "<", ">")
#: a URL is cut at 400 characters after its scheme, a link target at 800
#: from its start: a host that starts within this of a place is not cut there
_CUT_MARGIN = 390
#: ".label" places looked at per part before the part is simply read
_MAX_TLD_PLACES = 64
_DOTS = re.compile(r"\.*")


@lru_cache(maxsize=64)
def _label_tlds(tlds: frozenset[str]) -> frozenset[str]:
    """The entries that can be a host's last label: not empty, no dot."""
    return frozenset(t for t in tlds if t and "." not in t)


@lru_cache(maxsize=64)
def _tld_chars(tlds: frozenset[str]) -> frozenset[str]:
    """What a reference's text must not hold to be inert: ".", and the
    characters of the labels (either case)."""
    return frozenset(".".join(tlds) + ".") | frozenset(".".join(tlds).upper())


#: references looked at one by one at most, per part
_MAX_REFS_LOOKED_AT = 500


def _refs_inert(text: str, chars: frozenset[str]) -> bool:
    """True if no character reference in ``text`` reads (as _unescape reads
    it) to text that is empty or holds any of ``chars`` in either case:
    each is then left as it is or replaced by text that can neither join
    two pieces of a host name nor be one."""
    if text.count("&") > _MAX_REFS_LOOKED_AT:
        return False
    # no reference holds an "&" but the one it starts with: each "&" starts
    # its own, and those _LIVE_REF passes over are inert
    for live in _LIVE_REF.finditer(text):
        m = _CHARREF.match(text, live.start())
        if m is None:
            continue  # a bare "&": kept as it is
        ref = m.group(0)
        out = _ref_text(ref)
        if out == ref:
            continue
        if not out or not chars.isdisjoint(out) or not chars.isdisjoint(out.lower()):
            return False
    return True


@lru_cache(maxsize=4096)
def _ref_text(ref: str) -> str:
    """What _unescape makes of one reference (cached: mail repeats them)."""
    out = _LONG_CHARREF.sub(_long_charref, ref) if ref.startswith("&#") else ref
    return _named_or_numeric(_CHARREF.match(out)) if out.startswith("&") else out


@lru_cache(maxsize=64)
def _tld_scan(tlds: frozenset[str]) -> re.Pattern[str]:
    """ "." and any of ``tlds`` (not empty, no dot), the labels grouped by
    their first letter (a fifth faster than one flat alternation): every
    place a label may start, found (what follows is checked per label)."""
    by_first: dict[str, list[str]] = {}
    for t in tlds:
        by_first.setdefault(t[0], []).append(re.escape(t[1:]))
    alts = [
        re.escape(c) + "(?:" + "|".join(sorted(rest, key=len, reverse=True)) + ")"
        for c, rest in by_first.items()
    ]
    return re.compile(r"\.(?:" + "|".join(sorted(alts)) + ")")


def _ends_in(urls: list[str], tlds: frozenset[str]) -> bool:
    return any(url_host(u).rpartition(".")[2] in tlds for u in urls)


def _may_end_in(text: str, html_part: bool, tlds: frozenset[str]) -> bool:
    """False only if no URL or link target that reading this part (decoded,
    HTML not yet turned into text) finds can have a host whose last label
    is in ``tlds``.  Such a host ends, after "." and the label, where the
    host ends: at a character that is neither a letter, digit, "_" nor "-",
    or at dots followed by such a character (url_host strips dots), or at a
    cut of the URL's length.  Reading HTML only replaces tags, scripts and
    comments (which start with "<") by white space and references (which
    start with "&") by their text, so any such end is already in the raw
    part as ".label" followed by one of those or by "<" or "&", provided
    every reference is one whose text has no letter, digit or dot.  A cut
    is ruled out by a character no URL holds (or "/", which no host holds)
    within :data:`_CUT_MARGIN` before the place.  Lower-casing the whole
    part lower-cases every host in it, as url_host does."""
    if not html_part and "://" not in text and "www." not in text and "WWW." not in text:
        return False  # _find_urls finds no URL in it (the same look), and nothing else reads one
    tlds = _label_tlds(tlds)
    if not tlds:
        return False
    if html_part and "&" in text and _LIVE_REF.search(text) and not _refs_inert(text, _tld_chars(tlds)):
        return True
    low = text.lower()
    if "." not in low:
        return False
    for n, m in enumerate(_tld_scan(tlds).finditer(low)):
        if n >= _MAX_TLD_PLACES:
            return True  # hostile or unusual: read the part (bounded as ever)
        p = m.start()
        for tld in tlds:
            if not low.startswith(tld, p + 1):
                continue
            end = _DOTS.match(low, p + 1 + len(tld)).end()
            after = low[end : end + 1]
            if not after or after not in _HOST_GOES_ON:
                return True  # the host may end here ("x.top." too: url_host strips the dots)
            lo = max(0, end - _CUT_MARGIN)
            if all(low.find(c, lo, p) < 0 for c in _HOST_BEFORE):
                return True  # a long host: a cut could end it here
    return False


def _part_text(walk: _Walk, html_part: bool, text: str) -> None:
    """A text part's text and URLs, into the message."""
    msg = walk.msg
    if html_part:
        text = _html_to_text(text, msg._urls, walk)
    _find_urls(text, msg._urls)
    msg._text.append(text[:MAX_PART_TEXT])


def _defer(walk: _Walk, html_part: bool, text: str) -> bool:
    """Keep a text part to read on first use (True), or read it now: the
    rules of a current model read no text, and of the URLs only whether a
    host is in a blocked TLD, which :func:`_may_end_in` answers from the
    part's text as decoded (HTML not turned into text, no URL scan).  A
    part is deferred only while the "=", "<" and "&" of the deferred HTML
    parts stay below the per-message budgets of link
    attributes, tags and character references (each use of a budget takes
    one of them at least), so reading them later, with fresh budgets, is
    reading them now: same text, URLs, order and defects.  Once a part
    would pass a budget, the deferred ones are read in order and every
    later part is read at once."""
    msg = walk.msg
    counts = walk.counts
    if html_part:  # only HTML spends the budgets
        counts[0] += text.count("=")
        counts[1] += text.count("<")
        counts[2] += text.count("&")
    if counts[0] < MAX_LINK_ATTRS and counts[1] < MAX_TAGS and counts[2] < MAX_ENTITIES:
        msg._pending.append((html_part, text))
        return True
    walk.counts = [MAX_LINK_ATTRS, MAX_TAGS, MAX_ENTITIES]  # never defer again
    pending, msg._pending = msg._pending, []
    for p_html, p_text in pending:  # no budget ran out in these: the walk's are still whole
        _part_text(walk, p_html, p_text)
    return False


def _decode_payload(walk: _Walk, headers: list[tuple[str, str]], start: int, end: int) -> bytes:
    """The part's bytes, transfer encoding undone, at most MAX_PART_ENCODED
    of them read (a 50 MB base64 part is never decoded whole)."""
    if end - start > MAX_PART_ENCODED:
        walk.part_defects.append(f"part: decoded first {MAX_PART_ENCODED} of {end - start} chars")
        end = start + MAX_PART_ENCODED
    data = walk.data[start:end]
    cte_value = _first(headers, "content-transfer-encoding")
    cte = _sanitize(cte_value).strip().lower() if cte_value is not None else ""
    try:
        if cte == "base64":
            data = data.translate(None, _B64_JUNK)
            data = binascii.a2b_base64(data[: len(data) // 4 * 4])
        elif cte == "quoted-printable":
            data = binascii.a2b_qp(data)
    except (binascii.Error, ValueError):
        walk.part_defects.append(f"part: bad {cte}")
    return data


# -- header values ------------------------------------------------------------


def _address(value: str) -> tuple[str, str]:
    """(display name, address) of a From-like header.  A regex instead of
    email.utils.parseaddr(), which took a fifth of the parsing time and
    gives up on the broken headers spam is full of anyway."""
    if not value:
        return "", ""
    value = value[:MAX_ADDRESS_CHARS]
    m = _ANGLE_RE.search(value)
    if m:
        return value[: m.start()].strip().strip('"').strip(), (m.group(1) or m.group(2)).strip()
    m = _ADDR_RE.search(value)
    if not m:
        return "", value.strip()[:200]
    c = _COMMENT_NAME_RE.search(value)
    return (c.group(1).strip() if c else ""), m.group(0)


def decode_header(value: object) -> str:
    """Header value -> text: RFC 2047 words decoded, raw 8-bit read as UTF-8
    (falling back to Latin-1), folding removed.  At most MAX_HEADER_DECODE
    characters and MAX_ENCODED_WORDS encoded words are read."""
    text = str(value)
    if len(text) > MAX_HEADER_DECODE:
        text = text[:MAX_HEADER_DECODE]
    if not text.isascii() and _SURROGATE_RE.search(text):
        text = _decode_bytes(text.encode("ascii", "surrogateescape"), "utf-8")
    if "=?" in text:
        try:
            chunks = _decode_words(text)
        except Exception:
            chunks = None
        if chunks is not None:
            text = "".join(_decode_bytes(c, cs or "ascii") if isinstance(c, bytes) else c for c, cs in chunks)
    if "\n" in text or "\r" in text or "\t" in text or "  " in text:
        text = _WS_RE.sub(" ", text)
    return text.strip()


def _split_words(line: str, budget: list[int]) -> list[str]:
    """``ecre.split(line)`` of email.header (unencoded, charset, encoding,
    encoded, unencoded, ...) by ``str.find``: the stdlib's lazy regex rescans
    the rest of the line from every "=?" that does not close (quadratic)."""
    parts: list[str] = []
    pos = last = 0
    while budget[0] > 0:
        i = line.find("=?", pos)
        if i < 0:
            break
        j = line.find("?", i + 2)
        if j < 0:
            break
        if j + 2 < len(line) and line[j + 1] in "qQbB" and line[j + 2] == "?":
            k = line.find("?=", j + 3)
            if k < 0:  # no later "=?" can close either
                break
            parts += [line[last:i], line[i + 2 : j], line[j + 1], line[j + 3 : k]]
            last = pos = k + 2
            budget[0] -= 1
        else:
            pos = i + 1
    parts.append(line[last:])
    return parts


def _decode_words(header: str) -> list[tuple[bytes | str, str | None]] | None:
    """``email.header.decode_header`` with a linear splitter and a cap on
    encoded words; None if there are no encoded words (the text is kept as
    it is).  Same chunks as the stdlib otherwise, so subjects decode as
    before."""
    budget = [MAX_ENCODED_WORDS]
    words: list[tuple[str, str | None, str | None]] = []
    found = False
    for line in header.splitlines():
        parts = _split_words(line, budget)
        if len(parts) > 1:
            found = True
        first = True
        for n in range(0, len(parts), 4):
            unencoded = parts[n]
            if first:
                unencoded = unencoded.lstrip()
                first = False
            if unencoded:
                words.append((unencoded, None, None))
            if n + 1 < len(parts):
                words.append((parts[n + 3], parts[n + 2].lower(), parts[n + 1].lower()))
    if not found:
        return None
    drop = [
        n - 1 for n, w in enumerate(words) if n > 1 and w[1] and words[n - 2][1] and words[n - 1][0].isspace()
    ]
    for d in reversed(drop):
        del words[d]
    collapsed: list[tuple[bytes | str, str | None]] = []
    last_word: bytes | None = None
    last_charset: str | None = None
    for encoded, encoding, charset in words:
        if encoding is None:
            word: bytes | str = encoded
        elif encoding == "q":
            word = email.quoprimime.header_decode(encoded)
        else:
            pad = len(encoded) % 4
            if pad:
                encoded += "==="[: 4 - pad]
            word = email.base64mime.decode(encoded)  # binascii.Error: caller keeps the raw text
        if isinstance(word, str):
            word = bytes(word, "raw-unicode-escape")
        if last_word is None:
            last_word, last_charset = word, charset
        elif charset != last_charset:
            collapsed.append((last_word, last_charset))
            last_word, last_charset = word, charset
        elif last_charset is None:
            last_word += b" " + word
        else:
            last_word += word
    collapsed.append((last_word or b"", last_charset))
    return collapsed


_ASCII_PROBE = bytes(range(128)) + b"~{ab~}+AGE-\x1b$B"


@lru_cache(maxsize=256)
def _codec(charset: str) -> tuple[str, bool]:
    """A declared charset -> (the codec to decode it with, whether it reads
    ASCII bytes as ASCII).  Unknown or non-text codecs become UTF-8, and so
    does ASCII (8-bit bytes under an ascii label are usually UTF-8)."""
    charset = (charset or "utf-8").strip().strip("\"'").lower()
    try:
        info = codecs.lookup(charset)
        if not getattr(info, "_is_text_encoding", True):
            raise LookupError(charset)
    except Exception:  # LookupError, or ValueError/TypeError for names with NULs
        return "utf-8", True
    if charset in ("us-ascii", "ascii", "ansi_x3.4-1968"):
        return "utf-8", True
    try:
        plain = _ASCII_PROBE.decode(charset, "replace") == _ASCII_PROBE.decode("ascii")
    except Exception:
        plain = False
    return charset, plain


def _decode_bytes(data: bytes, charset: str) -> str:
    """Bytes -> str with the declared charset; errors are replaced, unknown or
    non-text codecs fall back to UTF-8, then Latin-1, never raising."""
    charset, plain = _codec(charset[:100] if charset else "utf-8")
    if plain and data.isascii():  # what the codec would give, without the codec
        return data.decode("ascii")
    try:
        text = data.decode(charset, "replace")
    except Exception:
        text = data.decode("latin-1")
    if charset == "utf-8" and text.count("\ufffd") > 8 and text.count("\ufffd") * 20 > len(text):
        text = data.decode("latin-1")
    return text


# -- HTML -----------------------------------------------------------------------


def html_to_text(text: str, urls: list[str] | None = None) -> str:
    """Visible text of an HTML document; link targets are appended to ``urls``
    because spam hides its real destination behind the anchor text.  Linear
    in the length of ``text`` whatever it holds."""
    return _html_to_text(text, urls, None)


def _html_to_text(text: str, urls: list[str] | None, walk: _Walk | None) -> str:
    if "<" in text:
        text = _drop_scripts(text)
        text = _drop_comments(text)
    if urls is not None:
        _link_targets(text, urls, walk)
    last = text.rfind(">")
    if last >= 0:
        # a break ends with ">": none can start after the last one, and without
        # that cut "<p" with no ">" after it is rescanned to the end
        left = walk.tags_left if walk is not None else MAX_TAGS
        head, n = _BREAK_RE.subn("\n", text[: last + 1], count=max(left, 1))
        text, m = _drop_tags(head + text[last + 1 :], max(left - n, 1))
        if walk is not None:
            walk.tags_left = left - n - m
            if walk.tags_left <= 0 and left > 0:
                walk.part_defects.append(f"html: more than {MAX_TAGS} tags, rest kept as is")
    if "&" in text:
        text = _unescape(text, walk)
    return text


def _drop_scripts(text: str) -> str:
    """``re.sub(r"(?is)<(script|style)\\b.*?</\\1\\s*>", " ", text)`` in linear
    time: once a kind has no closing tag after an opening one, no later
    opening tag of that kind can close either, so it is not looked for again
    (the regex would rescan to the end from each)."""
    alive = ("script", "style")
    out: list[str] = []
    pos = last = 0
    while alive:
        m = _SCRIPT_OPEN[alive].search(text, pos)
        if not m:
            break
        name = "script" if m.group(1)[1] in "Cc" else "style"
        c = _SCRIPT_CLOSE[name].search(text, m.end())
        if c is None:
            alive = tuple(a for a in alive if a != name)
            pos = m.end()
            continue
        out.append(text[last : m.start()])
        out.append(" ")
        last = pos = c.end()
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _drop_comments(text: str) -> str:
    """``re.sub(r"(?s)<!--.*?-->", " ", text)`` in linear time."""
    i = text.find("<!--")
    if i < 0:
        return text
    out: list[str] = []
    last = 0
    while i >= 0:
        j = text.find("-->", i + 4)
        if j < 0:
            break
        out.append(text[last:i])
        out.append(" ")
        last = j + 3
        i = text.find("<!--", last)
    out.append(text[last:])
    return "".join(out)


def _drop_tags(text: str, budget: int = 0) -> tuple[str, int]:
    """``re.subn(r"(?s)<[^>]{0,2000}>", " ", text, count=budget)`` in linear
    time.  That regex is only slow on ">"-free runs longer than a tag can be,
    from each "<" in them (it rescans up to 2,000 characters from each).  The
    "<"s of such a run, but those in its last 2001 characters, start no tag:
    that part is kept as it is, and the regex runs on the rest, where the
    first "<" of every run matches and no start fails.  Runs that long are
    rare in real mail, so usually the regex runs once on the whole text."""
    last = text.rfind(">")
    if last < 0:
        return text, 0
    head, tail = text[: last + 1], text[last + 1 :]
    runs = [(m.start(1), m.end(1)) for m in _LONG_RUN.finditer(head)]
    m = _LEADING_RUN.match(head)
    if m:
        runs.insert(0, (0, m.end()))
    if not runs:
        head, n = _TAG_RE.subn(" ", head, count=budget)
        return head + tail, n
    out: list[str] = []
    prev = done = 0
    for start, end in runs:
        cut = end - _TAG_MAX - 1
        piece, n = _TAG_RE.subn(" ", head[prev:start], count=max(budget - done, 1) if budget else 0)
        out += [piece, head[start:cut]]
        done += n
        prev = cut
    piece, n = _TAG_RE.subn(" ", head[prev:], count=max(budget - done, 1) if budget else 0)
    out += [piece, tail]
    return "".join(out), done + n


def _long_charref(m: re.Match) -> str:
    digits = m.group(0)[2:].rstrip(";")
    hexa = digits[:1] in "xX"
    digits = (digits[1:] if hexa else digits).lstrip("0") or "0"
    if len(digits) > 8:
        return "\ufffd"  # far beyond U+10FFFF, as html.unescape would say
    return "&#" + ("x" if hexa else "") + digits + ";"


def _named_or_numeric(m: re.Match) -> str:
    """html.unescape's replacement for one reference, with the search for a
    legacy name (one written without ";") cut to the longest such name: the
    stdlib tries every prefix of a 32-letter run."""
    s = m.group(1)
    if s[0] == "#":
        return html.unescape(m.group(0))
    if s in _HTML5:
        return _HTML5[s]
    for x in range(min(len(s) - 1, _LEGACY_MAX), 1, -1):
        if s[:x] in _HTML5:
            return _HTML5[s[:x]] + s[x:]
    return "&" + s


def _unescape(text: str, walk: _Walk | None) -> str:
    """html.unescape, with the per-message budget of character references
    (each costs a Python call) and digit runs cut before ``int()`` sees them
    (a 5,000-digit reference would raise ValueError)."""
    if "&#" in text:
        text = _LONG_CHARREF.sub(_long_charref, text)
    left = walk.entities_left if walk is not None else MAX_ENTITIES
    n = text.count("&")
    if n <= left:
        if walk is not None:
            walk.entities_left -= n
        return _CHARREF.sub(_named_or_numeric, text)
    cut = -1
    for _ in range(max(left, 0)):
        cut = text.find("&", cut + 1)
    if walk is not None:
        walk.entities_left = 0
        walk.part_defects.append(f"html: more than {MAX_ENTITIES} character references, rest kept as is")
    if cut < 0:
        return text
    return _CHARREF.sub(_named_or_numeric, text[:cut]) + text[cut:]


_LINK_SCHEMES = ("http:", "https:", "www.")


def _link_targets(text: str, urls: list[str], walk: _Walk | None = None) -> None:
    """href/src targets, every attribute that is not the tail of a longer
    name (``data-href``), overlapping ones included (an ``?href=`` inside a
    target counts too).  One C scan per name on lower-cased text; at most
    MAX_LINK_ATTRS attributes are read per message.  The spans of one scan
    serve both ways of reading them (a target with "&" in it is unescaped
    one at a time), so no text is scanned twice."""
    if "=" not in text:
        return
    low = text.lower()
    src = text if len(low) == len(text) else low  # keep the URL's case where offsets agree
    left = walk.links_left if walk is not None else MAX_LINK_ATTRS
    amp = "&" in low  # no "&" at all: no target needs unescaping, none is looked at for one
    for scan in _LINK_SCANS:
        if left <= 0 or len(urls) >= MAX_URLS:
            break
        spans = [m.span(1) for m in itertools.islice(scan.finditer(low), left)]
        if len(urls) + len(spans) < MAX_URLS and not (amp and any("&" in low[a:b] for a, b in spans)):
            # no budget reached and nothing to unescape: the loop below, in
            # one comprehension (a Python step per link was a tenth of parsing)
            urls += [src[a:b] for a, b in spans if low.startswith(_LINK_SCHEMES, a, b)]
            left -= len(spans)
            continue
        # the first ``left`` matches are all the loop can read before the budget stops it
        for a, b in spans:
            left -= 1
            if "&" in low[a:b]:
                target = html.unescape(src[a:b])
                if target.lower().startswith(("http:", "https:", "www.")):
                    urls.append(target)
            elif low.startswith(_LINK_SCHEMES, a, b):
                urls.append(src[a:b])
            if left <= 0 or len(urls) >= MAX_URLS:
                break
    if walk is not None:
        if left <= 0 and walk.links_left > 0:
            walk.part_defects.append(f"html: more than {MAX_LINK_ATTRS} link attributes, rest ignored")
        walk.links_left = left


def _find_urls(text: str, urls: list[str]) -> None:
    if "://" not in text and "www." not in text and "WWW." not in text:
        return
    room = MAX_URLS - len(urls)
    if room > 0:
        urls += [u.rstrip(".,;:!?") for u in _URL_RE.findall(text)[:room]]


def _parse_received(value: str) -> ReceivedHop:
    """One Received header -> hop, via mail-parser's clause splitter (it knows
    the quirks of many MTAs); an IP is taken from the from-clause's comment."""
    from mailparser.utils import parse_received  # imported lazily: costs 50 ms

    try:
        clauses = parse_received(value)
    except Exception:
        clauses = {}
    from_clause = str(clauses.get("from", ""))
    by_clause = str(clauses.get("by", ""))
    ip_match = _IPV4_RE.search(from_clause) or (None if clauses else _IPV4_RE.search(value))
    from_host = from_clause.split(None, 1)[0].strip("()[]").lower() if from_clause else ""
    by_host = by_clause.split(None, 1)[0].strip("()[]").lower() if by_clause else ""
    return ReceivedHop(
        from_host=from_host,
        from_ip=ip_match.group(1) if ip_match else "",
        by_host=by_host,
        raw=value,
    )
