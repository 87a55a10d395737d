"""The fast scoring path gives what the plain one gave, bit for bit.

``Filter.score`` was made faster (benchmarks/scoring.py) by rewriting the
steps every message goes through: removing filters' verdict headers, finding
the header block the features read, and the feature extraction itself.  The
plain versions, as they were before (commit 885f4a7), are kept here as the
definition; each test runs both on real corpus mail (trec07p-dev and the
SpamAssassin corpus: 8-bit, CRLF, malformed MIME and all) and on hostile
shapes, and wants identical bytes, identical feature vectors (slots, order,
dtype, values) and identical per-family slot streams, so a model file and
every accuracy figure keep their meaning.

The parse defers its text parts (HTML to text, URL scans) to first use and
the TLD rule asks whether any URL host can be in a blocked TLD before it
reads them (benchmarks/README.md, "Scoring path made faster again"): the
tests at the end compare every field and the rule's hits with the eager
parse, on the same corpus mail, hostile bodies and generated URL pieces.
"""

from __future__ import annotations

import html
import importlib
import itertools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsift import report, tokens
from mailsift.corpus import read_index
from mailsift.parse import MAX_HEADER_LINES, ParsedMessage
from mailsift.rules import tld
from mailsift.tokens import FeatureSettings, extract_bytes
from mailsift.train import PROFILES

# -- the plain versions (commit 885f4a7) ---------------------------------------


def plain_strip_verdict_headers(raw: bytes) -> bytes:
    """report.strip_verdict_headers before the fast paths: the line loop."""
    m = report._FIRST_LINES_RE.match(raw)
    cut = m.end() if m else len(raw)
    if not report._VERDICT_LINE_RE.match(raw):
        m = report._SCAN_RE.search(raw, 0, cut + 2)
        if m is None or m.end() - m.start() <= 3 or m.start() >= cut:
            return raw
    pieces = itertools.islice(report._PIECES_RE.finditer(raw), 4 * MAX_HEADER_LINES)
    kept: list[bytes] = []
    skipping = False
    consumed = n_kept = n_read = 0
    for m in pieces:
        line = m.group()
        n_read += 1
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
        elif report._VERDICT_LINE_RE.match(line):
            skipping = True
        elif report._FIELD_RE.match(line) or line.startswith(b"From "):
            skipping = False
            kept.append(line)
        else:
            break
        consumed += len(line)
        if not skipping:
            n_kept += line.endswith(b"\n")
            if n_kept >= MAX_HEADER_LINES:
                break
    else:
        if n_read == 4 * MAX_HEADER_LINES:
            m = report._HEAD_END_RE.search(raw, max(consumed - 1, 0))
            consumed = m.start() + 1 if m else len(raw)
    if consumed == sum(map(len, kept)):
        return raw
    return b"".join(kept) + raw[consumed:]


_PLAIN_HEAD_END = re.compile(rb"\r?\n\r?\n")


def plain_raw_view(raw: bytes, settings: FeatureSettings) -> bytes:
    start = 0
    if raw.startswith(b"From "):
        eol = raw.find(b"\n", 0, 1000)
        start = eol + 1 if eol > 0 else 0
    chunk = raw[start : start + settings.ngram_bytes + tokens._HEAD_SLACK]
    end = _PLAIN_HEAD_END.search(chunk)
    cut = end.start() + (2 if end.group().startswith(b"\r") else 1) if end else len(chunk)
    if settings.receiver_headers:
        if not (tokens._FILTER_FIRST.match(chunk, 0, cut) or tokens._FILTER_LINE.search(chunk, 0, cut)):
            return chunk[: settings.ngram_bytes]
        cutter = tokens._CUT_FILTER
    else:
        cutter = tokens._CUT_RECEIVER
    head = cutter.sub(b"", chunk[:cut])
    if len(head) == cut:
        return chunk[: settings.ngram_bytes]
    return (head + chunk[cut:])[: settings.ngram_bytes]


def _plain_slots(values: np.ndarray, n_bits: int) -> np.ndarray:
    v = values.astype(np.uint32)
    v ^= v >> np.uint32(15)
    v *= np.uint32(0x9E3779B1)
    v ^= v >> np.uint32(13)
    v *= np.uint32(0x85EBCA6B)
    return v >> np.uint32(32 - n_bits)


def plain_extract(raw: bytes, settings: FeatureSettings) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """tokens._extract_raw before the fast paths: (sorted unique slots, the
    slots of every key in order, the size of each family)."""
    view = plain_raw_view(raw, settings)
    b = np.frombuffer(view, dtype=np.uint8)
    n = len(b)
    keys = [np.zeros(0, dtype=np.uint32)]
    if n >= 4:
        b32 = b.astype(np.uint32)
        grams = (b32[:-3] << 24) | (b32[1:-2] << 16) | (b32[2:-1] << 8) | b32[3:]
        keys.append(grams ^ np.uint32(tokens._SEED["4g"]))
    if settings.raw_tokens and n:
        padded = np.zeros(n + 2, dtype=np.int8)
        padded[1:-1] = (tokens._RAW_CLASS == tokens._WORD).astype(np.int8).take(b)
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        starts, ends = edges[0::2], edges[1::2]
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(b * tokens._POW[:n], out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * tokens._INVPOW[starts]
        h = (h ^ (h >> np.uint64(32))).astype(np.uint32)
        keys.append(h ^ np.uint32(tokens._SEED["rawword"]))
        for d in range(1, settings.osb_window + 1):
            if len(h) > d:
                keys.append(
                    (h[:-d] * np.uint32(0x85EBCA6B) + h[d:] * np.uint32(2 * d + 1))
                    ^ np.uint32(tokens._SEED["rawpair"] + d)
                )
    slots = _plain_slots(np.concatenate(keys), settings.n_bits)
    return np.unique(slots), slots, [len(k) for k in keys[1:]]


# -- the comparisons -------------------------------------------------------------

SETTINGS = [
    PROFILES["full"].features,
    PROFILES["portable"].features,
    FeatureSettings(ngram_bytes=200, osb_window=3, n_bits=18),
    FeatureSettings(raw_tokens=False),
    FeatureSettings(ngram_bytes=4, osb_window=0),
]


def assert_same_features(raw: bytes, what: str) -> None:
    for fs in SETTINGS:
        assert tokens.raw_view(raw, fs) == plain_raw_view(raw, fs), what
        fast = extract_bytes(raw, fs)
        unique, slots, sizes = plain_extract(raw, fs)
        assert fast.indices.dtype == unique.dtype and np.array_equal(fast.indices, unique), what
        assert fast.values.dtype == np.float32 and np.all(fast.values == 1.0), what
        got = np.concatenate([s.slots for s in fast.streams] or [np.zeros(0, np.uint32)])
        assert np.array_equal(got, slots[: len(got)]) and len(got) == sum(
            size for size, _ in zip(sizes, fast.streams)
        ), what
        assert [len(s.slots) for s in fast.streams] == sizes[: len(fast.streams)], what


def variants(raw: bytes) -> list[tuple[str, bytes]]:
    """The message as it came, and the shapes a filter meets it in."""
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return [
        ("as is", raw),
        ("CRLF", crlf),
        ("bare CR", raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r")),
        ("delivered by mailsift", b"X-Spam-Flag: YES\nX-Spam-Score: 7.1\nX-Mailsift-Report: p=1\n" + raw),
        (
            "other filters inside",
            raw.replace(b"\n", b"\nX-Virus-Scanned: ok\n\tclean\nX-Rspamd-Score: 1\n", 2),
        ),  # noqa: E501
        ("mbox From line", b"From alice@example.org Mon Jul  1 10:00:00 2024\n" + raw),
        ("cut in half", raw[: len(raw) // 2]),
        ("no blank line", raw.replace(b"\n\n", b"\n", 1)),
        ("a verdict quoted in the body", raw[:3000] + b"\nX-Spam-Flag: NO\nX-Virus: x\n"),
        ("the same, CRLF", crlf[:3000] + b"\r\nX-Spam-Flag: NO\r\nX-Virus: x\r\n"),
    ]


def _sample(index, every: int, limit: int):
    return [item.path for item in read_index(index)[::every][:limit]]


@pytest.fixture(scope="module")
def corpus_messages(trec_dir, sa_dir):
    """About 600 messages: a slice of trec07p-dev's stream (8-bit and
    malformed mail is common there) and of every SpamAssassin folder."""
    paths = _sample(trec_dir / "all.index", 97, 300) + _sample(sa_dir / "all.index", 20, 300)
    return [(str(p), p.read_bytes()) for p in paths]


def test_the_sample_holds_8bit_crlf_verdict_and_mime_mail(corpus_messages):
    """So the comparisons below cover what they say they cover."""
    raws = [raw for _, raw in corpus_messages]
    assert len(raws) >= 550
    assert sum(any(c >= 0x80 for c in raw[:6000]) for raw in raws) >= 30
    assert sum(report.strip_verdict_headers(raw) is not raw for raw in raws) >= 50
    assert sum(b"multipart/" in raw.lower() for raw in raws) >= 50


def test_verdict_headers_are_stripped_as_the_line_loop_strips_them(corpus_messages):
    for path, raw in corpus_messages:
        for what, shape in variants(raw):
            assert report.strip_verdict_headers(shape) == plain_strip_verdict_headers(shape), (path, what)


def test_a_message_without_verdict_headers_comes_back_as_the_same_object(corpus_messages):
    for path, raw in corpus_messages:
        if plain_strip_verdict_headers(raw) is raw:
            assert report.strip_verdict_headers(raw) is raw, path


def test_feature_vectors_are_bit_for_bit_those_of_the_plain_extraction(corpus_messages):
    for path, raw in corpus_messages:
        for what, shape in variants(raw):
            assert_same_features(shape, f"{path} ({what})")
            kept = report.strip_verdict_headers(shape)
            assert_same_features(kept, f"{path} ({what}, stripped)")


HOSTILE = [
    b"",
    b"a",
    b"ab\n",
    b"abcd",
    b"\n\n",
    b"\r\n\r\n",
    b"\r\r",
    b"\n\r\n",
    b"\x00" * 10_000,
    b"\xff" * 7000,
    b"From x\n",
    b"X-Spam-Flag: NO",
    b"X-Spam-Flag: NO\n\nbody",
    b"a\n\r\nX-Spam: y\n",
    b"Subject: x\rX-Spam-Flag: YES\r\rbody",
    b"Subject: x\n" * 1200 + b"X-Spam-Flag: YES\n\nbody",
    b"X-Spam-Flag: YES\n" * 5000 + b"\nbody",
    b"Subject: x\n" + b"X-Spam-Flag: YES\n\t" + b"y" * 300_000 + b"\n\nbody",
    b"Subject: " + b"x" * 300_000 + b"\nX-Spam-Flag: YES\n\nbody",
    b"Subject: x\nnot a header\nX-Spam-Flag: YES\n\nbody",
    b"Subject: x\n" + b"\n" * 999 + b"X-Spam-Flag: YES\n",
    b" continuation first\nX-Spam-Flag: YES\n \tmore\nSubject: x\n\nbody",
    b"X-Virus-Scanned:\nX-Spam:\n:\n\n",
    b"Subject: x\r\nX-Spam-Flag: YES\r\n\r\n" + b"a" * 70_000,
]


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_shapes_give_what_the_plain_versions_give(raw):
    for what, shape in variants(raw):
        assert report.strip_verdict_headers(shape) == plain_strip_verdict_headers(shape), what
        assert_same_features(shape, what)


LINE = st.sampled_from(
    [
        b"Subject: x",
        b"X-Spam-Flag: YES",
        b"x-virus-scanned : clean",
        b"X-Mailer: spamcop-free",
        b"X-Rspamd-Score: 3",
        b" folded",
        b"\tfolded",
        b"From alice Mon",
        b"no header here",
        b"",
        b":",
        b"X-Spam",
        b"caf\xc3\xa9: 8-bit",
    ]
)
EOL = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(LINE, EOL), max_size=30), st.binary(max_size=40))
def test_any_mix_of_header_lines_strips_as_the_line_loop_does(lines, tail):
    raw = b"".join(line + eol for line, eol in lines) + tail
    assert report.strip_verdict_headers(raw) == plain_strip_verdict_headers(raw)
    assert_same_features(raw, "generated")


# -- the parse: deferred HTML, the TLD rule's look, To/Cc on first use ---------

P = importlib.import_module("mailsift.parse")

#: every field a caller reads of a ParsedMessage
PARSE_FIELDS = (
    "raw_start raw_headers subject from_addr from_name reply_to return_path to_addrs text html_parts "
    "urls mime_types charsets attachments defects truncated url_hosts headers received"
).split()


def eager_parse(raw: bytes) -> ParsedMessage:
    """parse() reading every part at once, as before deferral (commit 55ef2eb)."""
    real = P._defer
    P._defer = lambda walk, html_part, text: False
    try:
        return P.parse(raw)
    finally:
        P._defer = real


def plain_to_addrs(msg: ParsedMessage) -> list[str]:
    """To/Cc addresses as _read_headers computed them before they were lazy."""
    first = msg._first_raw
    if "to" not in first and "cc" not in first:
        return []
    raw = [v for k, v in msg.raw_headers if k == "to"] + [v for k, v in msg.raw_headers if k == "cc"]
    return P._ADDR_RE.findall(" ".join(map(P.decode_header, raw))[:20000])[:50]


def plain_link_targets(text: str, urls: list[str], walk=None) -> None:
    """_link_targets before its spans served both ways of reading them."""
    if "=" not in text:
        return
    low = text.lower()
    src = text if len(low) == len(text) else low
    left = walk.links_left if walk is not None else P.MAX_LINK_ATTRS
    for scan in P._LINK_SCANS:
        if left <= 0 or len(urls) >= P.MAX_URLS:
            break
        spans = [m.span(1) for m in itertools.islice(scan.finditer(low), left)]
        if len(urls) + len(spans) < P.MAX_URLS and not any("&" in low[a:b] for a, b in spans):
            urls += [src[a:b] for a, b in spans if low.startswith(P._LINK_SCHEMES, a, b)]
            left -= len(spans)
            continue
        for m in scan.finditer(low):
            left -= 1
            a, b = m.span(1)
            if "&" in low[a:b]:
                target = html.unescape(src[a:b])
                if target.lower().startswith(("http:", "https:", "www.")):
                    urls.append(target)
            elif low.startswith(P._LINK_SCHEMES, a, b):
                urls.append(src[a:b])
            if left <= 0 or len(urls) >= P.MAX_URLS:
                break
    if walk is not None:
        if left <= 0 and walk.links_left > 0:
            walk.part_defects.append(f"html: more than {P.MAX_LINK_ATTRS} link attributes, rest ignored")
        walk.links_left = left


#: the default blocked TLDs, and a list that hits ordinary mail often (so the
#: "may be in a blocked TLD" answer is exercised both ways)
TLD_LISTS = (
    frozenset(tld.DEFAULT_BLOCKED_TLDS),
    frozenset({"com", "net", "org", "de", "uk", "info", "biz", "ru", "cn", "jp", "html", "gif", "co"}),
)


def assert_same_parse(raw: bytes, what: str) -> None:
    eager = eager_parse(raw)
    for tlds in TLD_LISTS:
        lazy = P.parse(raw)
        defects = list(lazy.defects)  # before anything deferred is read
        if not lazy.urls_may_end_in(tlds):
            blocked = [h for h in eager.url_hosts[:50] if h.rpartition(".")[2] in tlds]
            assert not blocked, (what, sorted(tlds)[:3], blocked)
        assert lazy.to_addrs == plain_to_addrs(eager), what
        for name in PARSE_FIELDS:
            assert getattr(lazy, name) == getattr(eager, name), (what, name)
        assert defects == eager.defects, what
        rules = tld.DomainRules(blocked_tlds=sorted(tlds))
        assert tld.check(P.parse(raw), "", rules) == tld.check(eager, "", rules), what


def html_variants(raw: bytes) -> list[tuple[str, bytes]]:
    """The shapes above, and URLs in blocked TLDs put where the TLD look
    must see them: a link, the text, after a reference, at a cut."""
    out = variants(raw)
    for n, piece in enumerate(
        [
            b'<a href="http://promo.example.top/x">go</a>',
            b"visit WWW.Example.TOP. today &nbsp;",
            b"http://a.b.xyz&nbsp;and",
            b"<p>http://shop.example.top</p>",
            b"http://" + b"a" * 395 + b".top/",
            b'<a href="http://' + b"b" * 790 + b'.top">x</a>',
            b"x.top&#160; http://y.buzz.",
        ]
    ):
        html_doc = b"Content-Type: text/html\n\n<html><body>" + piece + b"</body></html>\n"
        out.append((f"blocked URL {n}", html_doc))
        out.append((f"blocked URL {n} after the message", raw + b"\n" + piece))
    return out


def test_deferred_html_reads_as_the_eager_parse_on_corpus_mail(corpus_messages):
    """Text, URLs, hosts, defects (before and after the deferred parts are
    read), To/Cc and every other field are the eager parse's; a part whose
    hosts the TLD look says cannot be blocked holds none; the TLD rule's
    hits are the same."""
    assert sum(b"text/html" in raw.lower() for _, raw in corpus_messages) >= 50
    for path, raw in corpus_messages:
        for what, shape in html_variants(raw):
            assert_same_parse(shape, f"{path} ({what})")


def test_most_html_mail_is_scored_without_turning_its_html_into_text(corpus_messages):
    """The point of deferring: the default rules read no HTML of most mail."""
    tlds = frozenset(tld.DEFAULT_BLOCKED_TLDS)
    html_mail = [P.parse(raw) for _, raw in corpus_messages if b"text/html" in raw.lower()]
    left = [m for m in html_mail if m._pending and not m.urls_may_end_in(tlds)]
    assert len(left) >= 0.7 * len(html_mail)


HOSTILE_HTML = [
    b"<a href=http://x.top>",
    b"<a href='http://x.TOP'>x</a>",
    b'<a href="http://x.to&#112;">',
    b'<a href="http://x&#46;top">',
    b"http://x.t&#111;p/",
    b"http://x.top&amp;y",
    b"http://a&amp;b.top/",
    b"http://x.&nbsp;top",
    b"www.x.top..., and",
    b"www.x.top.-y",
    b"http://x.topaz.com http://y.top:80/",
    b"http://user@x.top?q",
    b"http://x.top\\path",
    b"<b>http://x.</b>top",
    b"http://x.top<!-- c -->",
    b"<script>http://x.top</script>http://y.ga",
    b"http://x.\xe2\x84\xaaim",  # a Kelvin sign lower-cases to k: x.kim
    b"http://" + b"x" * 393 + b".top",
    b"http://" + b"x" * 394 + b".topaz",
    b"www." + b"y" * 396 + b".topaz",
    b'<a href="http://' + b"z" * 793 + b'.topaz">',
    b"@" * 200 + b"http://" + b"a" * 350 + b"@b.topx",
    b".top" * 5000,
    b".topx" * 5000 + b" http://y.top",
    b"&" * 6000 + b"http://x.top",
    b"<" * 31000 + b"http://x.top",
    b"<a href=http://x.com>" * 2100 + b"http://x.top",
]


@pytest.mark.parametrize("body", HOSTILE_HTML, ids=range(len(HOSTILE_HTML)))
def test_hostile_html_reads_as_the_eager_parse(body):
    for ctype in (b"text/html; charset=utf-8", b"text/plain; charset=utf-8"):
        raw = b"From: a@example.org\nContent-Type: " + ctype + b"\n\n" + body
        for what, shape in variants(raw):
            assert_same_parse(shape, f"{ctype!r} {what}")
        two = (
            b"From: a@example.org\nContent-Type: multipart/mixed; boundary=B\n\n--B\n"
            b"Content-Type: " + ctype + b"\n\n" + body + b"\n--B\nContent-Type: text/plain\n\n"
            b"http://later.example.xyz\n--B--\n"
        )
        assert_same_parse(two, f"{ctype!r} two parts")


FRAGMENT = st.sampled_from(
    [
        "http://", "https://", "www.", "WWW.", "x", "top", ".top", ".TOP", ".xyz", ".", "..", "/", "?",
        ":", "-", "_", " ", "\n", "<a href=", '"', "'", ">", "<b>", "</b>", "<!--", "-->", "&nbsp;",
        "&amp;", "&#46;", "&#116;", "&#1;", "&#169;", "&copy", "&period;", "&eacute;", "&x=", "&", ";",
        "K", "é", "@", "(", "=",
    ]
)  # fmt: skip


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAGMENT, max_size=40), st.booleans())
def test_any_mix_of_url_pieces_reads_as_the_eager_parse(pieces, as_html):
    ctype = b"text/html" if as_html else b"text/plain"
    raw = b"Content-Type: " + ctype + b"; charset=utf-8\n\n" + "".join(pieces).encode()
    assert_same_parse(raw, "generated")


def test_link_targets_are_read_as_the_two_scans_read_them(corpus_messages):
    texts = []
    real = P._link_targets
    P._link_targets = lambda text, urls, walk=None: (texts.append(text), real(text, urls, walk))[1]
    try:
        for _, raw in corpus_messages:
            eager_parse(raw)
    finally:
        P._link_targets = real
    texts += [b.decode("utf-8", "replace") for b in HOSTILE_HTML]
    assert len(texts) >= 100
    for text in texts:
        for links, urls in ((P.MAX_LINK_ATTRS, 0), (3, 0), (1, 0), (P.MAX_LINK_ATTRS, P.MAX_URLS - 2)):
            fast, plain = P._Walk(b"", ParsedMessage(b"")), P._Walk(b"", ParsedMessage(b""))
            fast.links_left = plain.links_left = links
            got, want = ["u"] * urls, ["u"] * urls
            P._link_targets(text, got, fast)
            plain_link_targets(text, want, plain)
            assert (got, fast.links_left, fast.part_defects) == (want, plain.links_left, plain.part_defects)


@pytest.mark.parametrize(
    "body",
    [
        b'<a href="http://promo.example.top/x">go</a>',
        b"<p>see www.shop.example.XYZ.</p>",
        b"<p>http://a.example.buzz&nbsp;now</p>",
        b'<a href="http://x.example.t&#111;p/">x</a>',
    ],
)
def test_a_deferred_html_part_still_earns_the_url_tld_points(body):
    raw = b"From: a@example.org\nContent-Type: text/html\n\n<html><body>" + body + b"</body></html>\n"
    msg = P.parse(raw)
    assert msg._pending  # deferred, and the TLD look still sees the host
    hits = tld.check(msg, "", tld.DomainRules())
    assert [h.name for h in hits] == ["URL_TLD_BLOCKED"]
    assert hits == tld.check(eager_parse(raw), "", tld.DomainRules())
