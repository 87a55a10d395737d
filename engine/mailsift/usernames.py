"""User names: which names the doors take (spamd ``User``, HTTP ``?user=``,
``--user``, an SMTP recipient) and the key each user's state is kept under.

A user name is whatever a mail system calls a mailbox or a login: a local
part (``o'brien``, ``a&b``, ``first.last``, ``alice+tag``, ``_alice``), an
address (``alice@example.org``), a Windows login (``DOMAIN\\alice``), a name
in any script (``jörg``).  All of them are accepted; each maps to its own
state.  Two rules decide when two spellings are the same user:

* surrounding spaces and tabs are dropped (they are header syntax, not name);
* ASCII letters fold to lower case (mailbox names and domains are
  case-insensitive in practice) and nothing else folds: no Unicode case
  folding or normalisation, which would map the Kelvin sign (U+212A) onto
  ``k`` and let a name written with it read and train another user's state.

The store key (:func:`key`) is an injective encoding of the name that is
safe as a file name and a Redis key: ``a-z 0-9 . _ @ + = -`` stand for
themselves (not ``.`` or ``-`` first), every other character is its UTF-8
bytes as ``%xx``.  ``%`` itself is always encoded, so a key decodes to
exactly one name (:func:`name_of`): ``o'brien`` is ``o%27brien`` and the
name ``o%27brien`` is ``o%2527brien``.  Names made of the plain characters
(every name accepted before this rule) keep the key they always had.

A name is refused (:class:`UserNameError`) only when it cannot be a name at
all: empty, over :data:`MAX_CHARS` characters or a key over :data:`MAX_KEY`
bytes (a file name's limit), or holding control characters (NUL, CR, LF,
DEL, C1), line separators or lone surrogates.  A door that scores scores a
refused name with the site model and logs it; only a learn is refused.
"""

from __future__ import annotations

import unicodedata

#: an address is at most 254 octets (RFC 5321); no login name is longer
MAX_CHARS = 254
#: a key names a folder: NAME_MAX on Linux and macOS
MAX_KEY = 255

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._@+=-")
_NOT_FIRST = frozenset(".-")  # ".", ".." and hidden folders; "-x" reads as an option
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_HEX = frozenset("0123456789abcdef")


class UserNameError(ValueError):
    """The name cannot name a user; the message says why."""


def fold(text: str) -> str:
    """``text`` with ASCII letters in lower case and every other character
    as it is (``str.lower`` would turn U+212A KELVIN SIGN into ``k``)."""
    return text.translate(_ASCII_LOWER)


def canonical(name: str) -> str:
    """The user ``name`` names: stripped of surrounding spaces and tabs,
    ASCII-folded.  Idempotent.  Raises UserNameError for a name that cannot
    be used."""
    if not isinstance(name, str):
        raise UserNameError(f"user name must be text, got {type(name).__name__}")
    norm = fold(name.strip(" \t"))
    if not norm:
        raise UserNameError("user name is empty")
    if len(norm) > MAX_CHARS:
        raise UserNameError(f"user name of {len(norm)} characters: at most {MAX_CHARS}")
    for ch in norm:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            what = "a byte that is not UTF-8" if unicodedata.category(ch) == "Cs" else "a control character"
            raise UserNameError(f"user name {name[:80]!r} holds {what} (U+{ord(ch):04X})")
    if len(_encode(norm)) > MAX_KEY:
        raise UserNameError(
            f"user name {name[:80]!r} is too long once encoded (at most {MAX_KEY} bytes; "
            "a character beyond a-z 0-9 . _ @ + = - takes 3 to 12)"
        )
    return norm


def key(name: str) -> str:
    """The store key of ``name``'s state (see the module text): a file name
    and a Redis key, the same for every spelling of one user and different
    for any two users."""
    return _encode(canonical(name))


def _encode(norm: str) -> str:
    if norm[0] not in _NOT_FIRST and all(ch in _PLAIN for ch in norm):
        return norm
    out = []
    for i, ch in enumerate(norm):
        if ch in _PLAIN and not (i == 0 and ch in _NOT_FIRST):
            out.append(ch)
        else:
            out.extend(f"%{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def name_of(stored: str) -> str:
    """The name a key was made from (the inverse of :func:`key` on its
    image: what makes the encoding injective).  Raises UserNameError for a
    string that is no key."""
    raw = bytearray()
    i = 0
    while i < len(stored):
        ch = stored[i]
        if ch == "%":
            pair = stored[i + 1 : i + 3]
            if len(pair) != 2 or not set(pair) <= _HEX:
                raise UserNameError(f"{stored!r} is not a user key: bad escape at {i}")
            raw.append(int(pair, 16))
            i += 3
        elif ch in _PLAIN:
            raw += ch.encode()
            i += 1
        else:
            raise UserNameError(f"{stored!r} is not a user key: {ch!r} is never plain")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserNameError(f"{stored!r} is not a user key: not UTF-8") from None
    if _encode(name) != stored:
        raise UserNameError(f"{stored!r} is not a user key: {name!r} is keyed otherwise")
    return name
