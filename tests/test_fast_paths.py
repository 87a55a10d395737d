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
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsift import report, tokens
from mailsift.corpus import read_index
from mailsift.parse import MAX_HEADER_LINES
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
