"""The SMTP DATA payload, both ways, without per-line Python work.

aiosmtpd reads DATA one line at a time (``readuntil`` plus a few Python
operations per line, then a loop over every line to undo dot-stuffing), and
aiosmtplib re-encodes a message with two regular-expression substitutions
over all of it, on the event loop.  For a 50 MB message of short lines that
is seconds during which every other session of the proxy waits (measured:
small messages delayed up to 13 s).  Here the payload is read in chunks with
one C-level search per chunk for the terminating ``<CRLF>.<CRLF>``, dot-
stuffing is undone and redone with ``bytes.replace``, and the encoding of a
large message is meant to run in a thread (see :func:`encode`).
"""

from __future__ import annotations

import asyncio

import aiosmtplib

#: read at most this much per call; StreamReader holds far less (it pauses
#: the transport at twice its limit), so each read takes its whole buffer
_CHUNK = 16 << 20
_END = b"\r\n.\r\n"


class DataTooBig(Exception):
    """The payload was longer than the limit; it was read to its end."""


async def read(reader: asyncio.StreamReader, limit: int | None, on_chunk=None) -> bytes:
    """The message a client sends after ``354``, dot-stuffing undone (RFC
    5321 4.5.2), without the final ``.<CRLF>``.  Raises :class:`DataTooBig`
    after reading the whole payload if it is over ``limit`` bytes, and
    :class:`ConnectionResetError` if the connection ends first.  Bytes the
    client sent after the terminator (pipelined commands) are put back.
    Lines may be any length: the MTA in front applied its own line policy."""
    parts: list[bytes] = []
    size = 0
    carry = b"\r\n"  # the terminator may come first: ".\r\n" right after 354
    too_big = False
    while True:
        chunk = await reader.read(_CHUNK)
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        if on_chunk is not None:
            on_chunk()
        window = carry + chunk
        i = window.find(_END)
        if i < 0:
            size += len(chunk)
            if limit and size > limit:
                too_big = True
                parts.clear()
            elif not too_big:
                parts.append(chunk)
            carry = window[-4:]
            continue
        end = i + 2 - len(carry)  # where the message ends, in chunk; < 0: inside what was kept
        rest = window[i + len(_END) :]
        if rest and not reader.at_eof():  # at EOF the session is ending: nothing to put back
            reader.feed_data(rest)  # read() emptied the buffer: this restores the order
        size += max(end, 0)
        if too_big or (limit and size > limit):
            raise DataTooBig(f"over {limit} bytes")
        data = b"".join(parts) + chunk[: max(end, 0)]
        if end < 0:
            data = data[:end]
        break
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


def encode(message: bytes) -> bytes:
    """``message`` as the DATA payload: every line ending CRLF (as
    aiosmtplib would make them), dot-stuffed, with the final ``.<CRLF>``.
    A few C-level passes over the message (no regex, nothing per line in
    Python); run it in a thread for a large message so the event loop gets
    the GIL between passes."""
    n_crlf = message.count(b"\r\n")
    if message.count(b"\n") != n_crlf or message.count(b"\r") != n_crlf:
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    head = b"." if message.startswith(b".") else b""
    tail = b"" if message.endswith(b"\r\n") else b"\r\n"
    return b"".join((head, message, tail, b".\r\n"))


async def send(client: aiosmtplib.SMTP, payload: bytes, timeout: float) -> aiosmtplib.SMTPResponse:
    """DATA with a payload made by :func:`encode` (aiosmtplib's ``data()``
    would encode it again, on the event loop).  Raises as ``data()`` does:
    :class:`aiosmtplib.SMTPDataError` for a refusal, a disconnect or timeout
    after closing the client."""
    resp = await client.execute_command(b"DATA", timeout=timeout)
    if resp.code != 354:
        raise aiosmtplib.SMTPDataError(resp.code, resp.message)
    protocol = client.protocol
    try:
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        protocol.write(payload)  # then the reply, with no await between: it cannot be missed
        resp = await protocol.read_response(timeout=timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if resp.code != 250:
        raise aiosmtplib.SMTPDataError(resp.code, resp.message)
    return resp
