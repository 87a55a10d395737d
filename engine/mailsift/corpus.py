"""Where labelled mail comes from: Maildir, mbox, a folder of files, or a
TREC-style index file (``spam PATH`` / ``ham PATH`` per line, PATH relative
to the index file's folder).

Readers yield ``(name, raw bytes)`` and load one message at a time, so a
large mailbox never has to fit in memory at once.  Problems a user can fix
(missing path, unreadable folder, malformed index line) raise
:class:`CorpusError` with the path and, for index files, the line number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: a separator looks like "From sender@host Mon Jul  1 10:00:00 2024": requiring
#: the time and year (as mutt's is_from() does) keeps an unquoted body line
#: starting with "From " from splitting a message
_MBOX_FROM = re.compile(rb"^From \S+ .*\b\d{1,2}:\d\d(?::\d\d)?\b.*\b\d{4}\b")
_MBOXRD_ESCAPED = re.compile(rb"^>(>*From )", re.M)
#: an RFC 5322 header field line: a name of printable ASCII but ':', then ':'
#: (obsolete syntax allows blanks before the colon)
_FIELD_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
#: how much of a message :func:`mail_problem` looks at
_SNIFF_BYTES = 64 * 1024


class CorpusError(Exception):
    """A mail source cannot be read; the message names the path."""


@dataclass(frozen=True)
class Labelled:
    """One message of a labelled corpus, not yet read."""

    spam: bool
    path: Path

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise CorpusError(f"{self.path}: cannot read message ({exc.strerror})") from None


def mail_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a mail message, or ``None`` if it looks like one.

    A message is not empty, starts (after an optional mbox ``From `` line)
    with an RFC 5322 header field line (``Name: value``; binary formats
    start with bytes no field name may hold), and has no NUL byte in its
    header block (RFC 5322 forbids NUL; a body may hold some: real spam
    carries unencoded attachments, 4 of trec07p's 37,710 messages).  Only
    the first 64 KB are read, so the check costs microseconds."""
    if not raw or raw.isspace():  # isspace stops at the first other byte; strip() would copy
        return "empty"
    head = raw[:_SNIFF_BYTES]
    start = 0
    if head.startswith(b"From "):
        eol = head.find(b"\n")
        start = eol + 1 if eol >= 0 else len(head)
    if not _FIELD_LINE.match(head, start):
        if 0 in head[:1024]:
            return "binary data (NUL bytes), not a mail message"
        first = head[start:].lstrip(b"\r\n").split(b"\n", 1)[0][:40]
        return f"no header block (first line {first.decode('latin-1').rstrip()!r} is not 'Name: value')"
    end = re.search(rb"\n\r?\n", head)
    if 0 in head[: end.start() if end else len(head)]:
        return "NUL bytes in the header block: binary data, not a mail message"
    return None


def read_index(index: str | os.PathLike) -> list[Labelled]:
    """Parse a TREC-style index file; every line is ``ham|spam PATH``."""
    index = Path(index)
    try:
        text = index.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise CorpusError(f"{index}: index file not found") from None
    except OSError as exc:
        raise CorpusError(f"{index}: cannot read index file ({exc.strerror})") from None
    base = index.parent
    items: list[Labelled] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or parts[0].lower() not in ("ham", "spam"):
            raise CorpusError(f"{index}:{lineno}: expected 'ham PATH' or 'spam PATH', got {line[:60]!r}")
        items.append(Labelled(parts[0].lower() == "spam", base / parts[1].strip()))
    return items


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def is_mbox(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(5)
    except OSError:
        return False
    return head == b"From "


def iter_source(source: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """Messages of one source: a Maildir (its ``cur/`` and ``new/``; pass a
    Dovecot subfolder such as ``~/Maildir/.Junk`` to read just that folder),
    an mbox file, a single message file, or a plain folder of message files
    (read recursively; hidden files and Maildir ``tmp/`` skipped)."""
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    if path.is_file():
        if is_mbox(path):
            yield from iter_mbox(path)
        else:
            yield str(path), _read(path)
        return
    if not os.access(path, os.R_OK | os.X_OK):
        raise CorpusError(f"{path}: folder is not readable")
    if is_maildir(path):
        folders = [path / "cur", path / "new"]
    else:
        folders = [path]
    for folder in folders:
        yield from _iter_folder(folder, top=path)


def _iter_folder(folder: Path, top: Path) -> Iterator[tuple[str, bytes]]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise CorpusError(f"{folder}: cannot list folder ({exc.strerror})") from None
    for entry in entries:
        if entry.name.startswith(".") or entry.name == "tmp":
            continue  # Dovecot subfolders (.Junk) are separate sources; tmp/ is in delivery
        p = Path(entry.path)
        if entry.is_dir():
            if is_maildir(p) and p != top:
                continue  # a nested Maildir is another mailbox: name it explicitly
            yield from _iter_folder(p, top)
        elif entry.is_file():
            if is_mbox(p):
                yield from iter_mbox(p)
            else:
                yield str(p), _read(p)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read message ({exc.strerror})") from None


def iter_mbox(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """Split an mbox file on ``From `` separator lines (at the start of the
    file or after a blank line, with a date) and undo ``>From `` quoting (mboxrd: one
    ``>`` removed from any run of ``>`` before ``From ``)."""
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise CorpusError(f"{path}: cannot open mbox ({exc.strerror})") from None
    with fh:
        n = 0
        lines: list[bytes] = []
        prev_blank = True
        started = False
        for line in fh:
            if prev_blank and line.startswith(b"From ") and _MBOX_FROM.match(line.rstrip(b"\r\n")):
                if started:
                    yield f"{path}#{n}", _finish_mbox_message(lines)
                    n += 1
                lines = []
                started = True
                prev_blank = False
                continue
            lines.append(line)
            prev_blank = line in (b"\n", b"\r\n")
        if started:
            yield f"{path}#{n}", _finish_mbox_message(lines)


def _finish_mbox_message(lines: list[bytes]) -> bytes:
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]  # the blank line before the next separator belongs to the mbox
    return _MBOXRD_ESCAPED.sub(rb"\1", b"".join(lines))
