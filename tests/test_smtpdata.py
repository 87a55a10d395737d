"""The chunked DATA reader and encoder give byte for byte what aiosmtpd's
per-line reader and aiosmtplib's encoder give, for any payload split into
any chunks (pipelined commands after the terminator included)."""

from __future__ import annotations

import asyncio
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailsift import smtpdata

_ATOMS = [b"a", b".", b"..", b"\r\n", b"\n", b"\r", b"\r\n.", b"\r\n..", b" x", b"\r\n.\r", b"\xff"]


def _aiosmtpd_reference(stream: bytes) -> tuple[bytes, bytes]:
    """aiosmtpd's rule: CRLF-terminated lines up to a line that is ".\r\n";
    a leading dot of every other line removed.  (message, what follows)."""
    lines, pos = [], 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line = stream[pos:end]
        pos = end
        if line == b".\r\n":
            break
        lines.append(line[1:] if line.startswith(b".") else line)
    return b"".join(lines), stream[pos:]


def _aiosmtplib_reference(message: bytes) -> bytes:
    message = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", message) + b".\r\n"


async def _read(chunks: list[bytes], limit=None):
    reader = asyncio.StreamReader()
    for c in chunks:
        reader.feed_data(c)
    data = await smtpdata.read(reader, limit)
    try:  # what is left after the terminator (pipelined commands)
        rest = await asyncio.wait_for(reader.read(1 << 20), 0.01)
    except TimeoutError:
        rest = b""
    return data, rest


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_ATOMS), max_size=30), st.lists(st.integers(1, 40), max_size=8))
def test_read_matches_aiosmtpd_whatever_the_chunking(atoms, cuts):
    payload = smtpdata.encode(b"".join(atoms))
    stream = payload + b"QUIT\r\n"
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    assert asyncio.run(_read(chunks)) == _aiosmtpd_reference(stream)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_ATOMS), max_size=30))
def test_encode_matches_aiosmtplib(atoms):
    message = b"".join(atoms)
    assert smtpdata.encode(message) == _aiosmtplib_reference(message)


def test_an_empty_message_and_the_limit():
    assert asyncio.run(_read([b".\r\n", b"NOOP\r\n"])) == (b"", b"NOOP\r\n")
    try:
        asyncio.run(_read([b"x" * 100 + b"\r\n.\r\n"], limit=50))
    except smtpdata.DataTooBig:
        pass
    else:
        raise AssertionError("over the limit must raise DataTooBig")
