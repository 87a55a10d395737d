"""dkimpy's message split and body canonicalization, in linear time.

DKIM and ARC are verified on the whole message (up to ``max_message_size``,
50 MiB), so what dkimpy does per byte is what a hostile message can make a
scoring worker do.  Measured with dkimpy 1.1.8 (figures in
benchmarks/README.md, "hostile.py"):

- ``rfc822_parse`` splits the *whole* message into lines in Python and joins
  the body again: 1.8 s for 50 MB, before any signature is looked at;
- the relaxed body canonicalization strips trailing whitespace with
  ``re.sub(b"[\\t ]+\\r\\n", ...)``, which is quadratic in a run of blanks
  not followed by CRLF (the regex restarts inside the run): 6 s for 40,000
  spaces, hours for a megabyte, and the regex holds the GIL all along;
- ``strip_trailing_lines`` removes trailing empty lines two bytes per Python
  loop turn (seconds for a body of blank lines).

Anyone can publish a key for a domain of their own and sign such a message,
so these are reached before any check of the sender.  This module gives the
same results (``tests/test_auth.py`` compares them with dkimpy's own on
random input) with bytes methods instead of Python loops and regexes (sre
costs 20 to 80 ns a byte even when linear): the split cuts the header
section off first (bounded, :data:`MAX_HEADER_BYTES`) and converts the
body's line ends with two ``bytes.replace``; :func:`install`, called once
when ``auth`` is imported, puts the two body canonicalizations in place in
``dkim.canonicalization`` (``strip_trailing_lines`` is a module global
looked up at each call; ``Relaxed.canonicalize_body`` a static method).
50 MB bodies, split and one relaxed signature: 1.0 to 1.2 s (plain text:
13.1 s with dkimpy's own); a megabyte of spaces 0.08 s (hours before).
"""

from __future__ import annotations

import re

import dkim
import dkim.canonicalization

#: a header section longer than this is not handed to dkimpy (its header
#: parse is a Python loop per line); real ones are a few KiB, 100 KiB with
#: long ARC chains
MAX_HEADER_BYTES = 1024 * 1024

_BLANK_LINE = re.compile(rb"\n\r?\n")


#: dkimpy's own functions, kept to compare against (tests) and to undo :func:`install`
DKIMPY = {
    "strip_trailing_lines": dkim.canonicalization.strip_trailing_lines,
    "relaxed_body": dkim.canonicalization.Relaxed.canonicalize_body,
}


class HeaderSectionTooLarge(dkim.DKIMException):
    """The header section is over :data:`MAX_HEADER_BYTES`: not verified
    (a permerror, like any other signature that cannot be checked)."""


def split(raw: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse(raw)``: (header fields as [name, value], body
    with CRLF line ends), without splitting the body into lines."""
    if raw.startswith((b"\n", b"\r\n")):  # no header section at all
        head, body = b"", raw[raw.index(b"\n") + 1 :]
    else:
        m = _BLANK_LINE.search(raw)
        head, body = (raw[: m.start() + 1], raw[m.end() :]) if m else (raw, b"")
    if len(head) > MAX_HEADER_BYTES:
        raise HeaderSectionTooLarge(f"header section of {len(head):,} bytes, over {MAX_HEADER_BYTES:,}")
    headers, _ = dkim.rfc822_parse(head) if head else ([], b"")
    # rfc822_parse joins the lines it split on \r?\n with \r\n: the same as this
    return headers, body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def strip_trailing_lines(content: bytes) -> bytes:
    """dkimpy's ``strip_trailing_lines``: trailing CRLFs down to one (one
    added if there is none), counted with ``rfind`` instead of a loop turn
    per CRLF.  In the CR/LF tail, the CRLF pairs at the end are the
    alternating run after the last doubled byte."""
    tail = content[len(content.rstrip(b"\r\n")) :]
    pairs = 0
    if tail.endswith(b"\n"):
        pairs = (len(tail) - 1 - max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n"))) // 2
    if pairs == 0:
        return content + b"\r\n"
    return content[: len(content) - 2 * (pairs - 1)]


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 (dkimpy's ``Relaxed.canonicalize_body``) with bytes
    methods only: a tab is a space for this purpose (every run of WSP
    becomes one SP), runs are halved by ``replace`` until none is left (a
    pass per doubling of the longest run), then the one space left before
    each CRLF goes."""
    body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"    ", b" ").replace(b"  ", b" ")
    body = strip_trailing_lines(body.replace(b" \r\n", b"\r\n"))
    return b"" if body == b"\r\n" else body


def verifier(cls: type, raw: bytes, **kwargs):
    """A ``dkim.DKIM`` or ``dkim.ARC`` holding ``raw``, split by :func:`split`."""
    signer = cls(None, **kwargs)
    signer.headers, signer.body = split(raw)
    return signer


def install() -> None:
    """Point dkimpy's canonicalization at the linear functions (idempotent)."""
    dkim.canonicalization.strip_trailing_lines = strip_trailing_lines  # Simple's body
    dkim.canonicalization.Relaxed.canonicalize_body = staticmethod(relaxed_body)
