r"""Verdict -> the headers added to a scanned message.

``X-Spam-Flag``, ``X-Spam-Score`` and ``X-Spam-Status`` follow SpamAssassin's
format so existing Sieve and procmail rules keep working;
``X-Spam-Level`` carries SpamAssassin's stars (one ``*`` per whole point,
at most 50), for procmail recipes like ``^X-Spam-Level: \*\*\*\*\*``;
``X-Mailsift-Report`` carries the explanation.  Every ``X-Spam-*`` header
already in the message is removed first (including other filters' ones such
as ``X-Spam-Checker-Version``): a spammer must not be able to pre-set
``X-Spam-Flag: NO``, and a reader must not mistake a stale header for ours.

:func:`strip_verdict_headers` goes further, for what reaches the features:
it removes every header a *filter* writes (mailsift's and other filters'
verdicts), so a model never learns its own or another filter's verdict and a
forged verdict header cannot steer the score.
"""

from __future__ import annotations

import itertools
import re

from .parse import MAX_HEADER_LINES
from .score import Verdict

OUR_HEADERS = ("x-spam-flag", "x-spam-score", "x-spam-status", "x-spam-level", "x-mailsift-report")
#: headers removed from incoming mail: every X-Spam-* (ours and anyone
#: else's) and our own report
_OURS_RE = re.compile(rb"^(?:x-spam-[!-9;-~]*|x-mailsift-report)[ \t]*:", re.I)
_MAX_REPORT = 900
#: SpamAssassin's _STARS(*)_ stops at 50 "to stay on the right side of the RFCs"
MAX_STARS = 50


def replaced_on_scan(name: str) -> bool:
    """True for a header name every door removes from incoming mail before
    adding its verdict (any ``X-Spam-*``, ``X-Mailsift-Report``): the one
    rule for add_headers and for the milter, which deletes by name."""
    return bool(_OURS_RE.match(name.encode("latin-1", "replace") + b":"))


def spam_level(score: float) -> str:
    """SpamAssassin's ``X-Spam-Level`` value: one ``*`` per whole point
    (truncated, so 4.9 is ``****``), none below 1, at most 50."""
    if score != score:  # NaN
        return ""
    return "*" * int(max(0.0, min(float(MAX_STARS), score)))


#: Header names written by spam and virus filters, removed before anything
#: reads a message for features (score, train, learn, tune, eval).  Why each:
#:
#: * any ``X-`` name containing ``spam`` (``X-Spam-*``: SpamAssassin's Flag,
#:   Status, Score, Level, Report, Checker-Version and mailsift's own;
#:   ``X-Spamd-Result``/``X-Spamd-Bar`` from Rspamd; ``X-DSPAM-*``;
#:   ``X-SpamExperts-*``; ``X-ASF-Spam-Status``; ``X-Barracuda-Spam-*``;
#:   ``X-Proofpoint-Spam-*``; ``X-Microsoft-Antispam*``;
#:   ``X-Forefront-Antispam-Report``; ``X-IronPort-Anti-Spam-*``;
#:   ``X-Mimecast-Spam-*``; ``X-MailScanner-SpamCheck``; ``X-Old-Spam-Status``
#:   and the other renamed copies relays keep): these are verdicts.  A
#:   sender-side header of such a name (a bulk mailer's ``X-Report-Spam``)
#:   costs one feature, which is cheaper than letting anyone who can write a
#:   header name with "spam" in it steer the score;
#: * any ``X-`` name containing ``virus`` (``X-Virus-Scanned``,
#:   ``X-Virus-Status``, ``X-Antivirus*``, ``X-Barracuda-Virus-Scanned``,
#:   ``X-Proofpoint-Virus-Version``): the receiving site's scanner, not the
#:   sender; it says which server or filter saw the mail, a label proxy;
#: * the prefixes below, for filters whose verdict headers do not say "spam":
#:   Rspamd (``X-Rspamd-*``: Action, Score, Server, Queue-Id), CRM114, amavisd
#:   (``X-Amavis-*`` and its ``X-Quarantine-ID``), MailScanner, Barracuda's
#:   Bayes and BRTS verdicts, policyd-weight (``X-Policyd-Weight``; every
#:   ``X-Policyd-*`` is a policy daemon's decision), Exchange's spam and phish
#:   confidence levels (``X-MS-Exchange-Organization-SCL``/``-PCL``), and the
#:   mailsift report.
#:
#: Not removed: ``Authentication-Results`` and ``Received-SPF`` (results of
#: checks on the sender, which the rules re-derive and which are not a
#: spam/ham decision), ``Received``, ``X-Greylist`` (delivery history), and
#: every ``X-`` header a sender's software writes (``X-Mailer``, ...).
VERDICT_SUBSTRINGS = ("spam", "virus")
VERDICT_PREFIXES = (
    "x-mailsift-",
    "x-rspamd-",
    "x-bogosity",
    "x-crm114-",
    "x-amavis-",
    "x-quarantine-id",
    "x-mailscanner",
    "x-barracuda-bayes",
    "x-barracuda-brts-status",
    "x-policyd-",
    "x-ms-exchange-organization-scl",
    "x-ms-exchange-organization-pcl",
)
_FTEXT = rb"[!-9;-~]"  # RFC 5322 field-name characters: printable ASCII but ':'
# One pass over the header block; no backtracking that can go quadratic: the
# atomic group commits to the first "spam"/"virus" in the name and the
# possessive tail then runs to the colon once.
_VERDICT_NAME = (
    rb"(?:x-(?>"
    + _FTEXT
    + rb"*?(?:"
    + b"|".join(s.encode() for s in VERDICT_SUBSTRINGS)
    + rb"))|"
    + b"|".join(re.escape(p.encode()) for p in VERDICT_PREFIXES)
    + rb")"
    + _FTEXT
    + rb"*+[ \t]*:"
)
_VERDICT_LINE_RE = re.compile(_VERDICT_NAME, re.I)
# the fast path: one scan from line start to line start (the literal "\n"
# lets the regex engine skip between them) that stops at the first verdict
# header or at the blank line ending the header block, whichever comes first
_SCAN_RE = re.compile(rb"\n(?:\r?\n|" + _VERDICT_NAME + rb")", re.I)
_FIELD_RE = re.compile(_FTEXT + rb"*+[ \t]*:")
_HEAD_END_RE = re.compile(rb"\n\r?\n")
#: the first MAX_HEADER_LINES lines: where the cut is
_FIRST_LINES_RE = re.compile(rb"(?:[^\n]*\n){%d}" % MAX_HEADER_LINES)


#: bytes the fast path of :func:`strip_verdict_headers` scans for the end of
#: the header block before it counts lines (counting the first
#: MAX_HEADER_LINES lines ran through the whole of most messages: 60 us of a
#: 700 us score on trec07p-dev)
_SCAN_WINDOW = 1 << 16
#: lines :func:`strip_verdict_headers` reads at most
_STRIP_BUDGET = 4 * MAX_HEADER_LINES
#: one line as bytes.splitlines(keepends=True) splits them
_PIECES_RE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _header_cut(raw: bytes) -> int:
    """Offset past the first :data:`~mailsift.parse.MAX_HEADER_LINES` lines:
    the parser reads no header beyond them, so neither does the strip (a
    flood of millions of header lines costs the same as a thousand)."""
    m = _FIRST_LINES_RE.match(raw)
    return m.end() if m else len(raw)  # fewer lines than that: no cut


def spam_headers(verdict: Verdict | None) -> list[tuple[str, str]]:
    """Header (name, value) pairs for a verdict; ``None`` means scoring
    failed and the message passes marked ``Unknown``."""
    if verdict is None:
        return [("X-Spam-Status", "Unknown, scoring failed; message passed unscanned")]
    tests = ",".join([h.name for h in verdict.hits] + [_model_test(verdict)])
    status = "Yes" if verdict.is_spam else "No"
    out = []
    if verdict.is_spam:
        out.append(("X-Spam-Flag", "YES"))
    out += [
        ("X-Spam-Score", f"{verdict.score:.1f}"),
        ("X-Spam-Level", spam_level(verdict.score)),
        (
            "X-Spam-Status",
            f"{status}, score={verdict.score:.1f} required={verdict.required:.1f} tests={tests}",
        ),
        ("X-Mailsift-Report", _report(verdict)),
    ]
    return out


def _model_test(verdict: Verdict) -> str:
    """A SpamAssassin-like test name for the model's band, e.g. MAILSIFT_99."""
    p = verdict.probability
    band = "999" if p >= 0.999 else f"{int(p * 100):02d}"
    return f"MAILSIFT_{band}"


def _report(verdict: Verdict) -> str:
    parts = [f"p={verdict.probability:.4f} model={verdict.model_points:+.2f}"]
    parts += [f"{h.name}={h.score:+.2f}" for h in verdict.hits]
    spam = [e.feature for e in verdict.evidence if e.weight > 0][:3]
    ham = [e.feature for e in verdict.evidence if e.weight < 0][:3]
    if spam:
        parts.append("spammy: " + ", ".join(spam))
    if ham:
        parts.append("hammy: " + ", ".join(ham))
    text = "; ".join(parts)
    # one header line: printable ASCII only, bounded length
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return text[:_MAX_REPORT]


def add_headers(raw: bytes, headers: list[tuple[str, str]]) -> bytes:
    """Put ``headers`` at the top of the message, after removing any headers
    of ours already in its header block; line endings follow the message's.

    The header block is scanned by a regular expression in slices of about
    :data:`_SLICE` bytes cut at header boundaries, and the body is copied
    once, untouched: the cost is one C-level pass, and a caller in a thread
    (the proxy) gives the GIL back to its event loop between slices, however
    large the message (a 50 MB header block took 7.6 s in a Python loop)."""
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    head_end = _header_end(raw)
    new = b"".join(f"{name}: {value}".encode("ascii", "replace") + eol for name, value in headers)
    parts = [new]
    start = 0
    while start < head_end:
        m = _HEADER_START_RE.search(raw, min(start + _SLICE, head_end), head_end)
        stop = m.start() + 1 if m else head_end
        parts.append(_strip_ours(raw[start:stop]))
        start = stop
    parts.append(memoryview(raw)[head_end:])
    return b"".join(parts)


#: header block slices for :func:`add_headers`
_SLICE = 1 << 20
#: a line ending followed by a line that is not a continuation: a place to cut
_HEADER_START_RE = re.compile(rb"\n(?![ \t])")
_EOL = rb"(?:\r\n|\r|\n)"
_OURS_FIELD = rb"(?:x-spam-[!-9;-~]*|x-mailsift-report)[ \t]*:[^\r\n]*(?:" + _EOL + rb"[ \t][^\r\n]*)*"
#: a run of our headers (with their continuation lines and line endings),
#: and the line ending before it, which stays
_OURS_RUN_RE = re.compile(
    rb"(\r\n|\r|\n)" + _OURS_FIELD + rb"(?:" + _EOL + _OURS_FIELD + rb")*" + _EOL + rb"?", re.I
)


def _strip_ours(head: bytes) -> bytes:
    """``head`` (whole header lines) without the lines of :data:`_OURS_RE`
    and their continuations.  A line ending put in front stands for the one
    before the first line, and is taken off again."""
    low = b"\n" + head.lower()
    if not any(
        x in low for x in (b"\nx-spam-", b"\rx-spam-", b"\nx-mailsift-report", b"\rx-mailsift-report")
    ):
        return head  # the common case, and a flood of other headers: C-speed literal searches only
    out = _OURS_RUN_RE.sub(rb"\1", b"\n" + head)
    return head if len(out) == len(head) + 1 else out[1:]


def add_headers_after_from_line(raw: bytes, headers: list[tuple[str, str]]) -> bytes:
    """:func:`add_headers` for a message a delivery agent hands over (the
    pipe filter, spamc under procmail): an mbox ``From `` line stays first,
    as SpamAssassin keeps it; above it, ours would leave it a stray line in
    the header block.  (Mail from an MTA over SMTP or milter has none.)"""
    from_line = raw[: raw.find(b"\n") + 1] if raw.startswith(b"From ") and b"\n" in raw else b""
    return from_line + add_headers(raw[len(from_line) :], headers)


def _header_end(raw: bytes) -> int:
    """Offset where the header block ends (at its blank line), or the end."""
    crlf = raw.find(b"\r\n\r\n")
    lf = raw.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(raw))  # only before it: no scan of the body
    if lf >= 0:
        return lf + 1
    return crlf + 2 if crlf >= 0 else len(raw)


_EOL_OPT = rb"(?:\r\n|\r|\n|\Z)"
#: the header block as the line loop of :func:`strip_verdict_headers` reads
#: it: lines that are a continuation, a field (``_FIELD_RE``) or an mbox
#: ``From `` line, each with its line ending (``\r\n``, ``\r`` or ``\n``,
#: as splitlines cuts them)
_BLOCK_RE = re.compile(rb"(?:(?:[ \t]|From |" + _FTEXT + rb"*+[ \t]*:)[^\r\n]*+" + _EOL_OPT + rb")*+")
#: a line ending, then a run of verdict header lines with their
#: continuation lines (the loop's "skipping"): removed, the ending kept
_VERDICT_RUN_RE = re.compile(
    rb"(\r\n|\r|\n)(?:"
    + _VERDICT_NAME
    + rb"[^\r\n]*+"
    + _EOL_OPT
    + rb"(?:[ \t][^\r\n]*+"
    + _EOL_OPT
    + rb")*+)++",
    re.I,
)
#: header blocks longer than this take the line loop
_BLOCK_WINDOW = 1 << 18


def _strip_short_block(raw: bytes, first: int) -> bytes | None:
    """What the line loop of :func:`strip_verdict_headers` returns, without
    a Python step per line, for a header block it reads whole: one shorter
    than :data:`_BLOCK_WINDOW` bytes and fewer than MAX_HEADER_LINES lines,
    so neither of the loop's limits applies, and holding the verdict header
    the first scan found at ``first``.  None otherwise (the exact path
    decides).  Measured on trec07p-dev, where half the mail carries a
    filter's headers: about 10 us instead of 120 us a message."""
    stop = min(len(raw), _BLOCK_WINDOW)
    blank = raw.find(b"\n\n", 0, stop)
    if blank < 0 and stop < len(raw):
        return None  # no end of the header block in the window
    head_stop = blank + 1 if blank >= 0 else stop
    lf_only = raw.find(b"\r", 0, head_stop) < 0
    if lf_only:
        # lines start after each "\n": the first line that is no header
        # line is found by a scan that skips from line start to line start
        if not _HEADER_LINE_RE.match(raw, 0, head_stop):
            end = 0
        else:
            bad = _NOT_HEADER_LINE_RE.search(raw, 0, head_stop)
            end = bad.start() + 1 if bad else head_stop
    else:  # bare CRs end lines too: the block's lines one regex pass each
        end = _BLOCK_RE.match(raw, 0, stop).end()
        if stop < len(raw) and (end == stop or not _EOL_RE.search(raw, end, stop)):
            return None  # the block may go on past the window: its last line was not read whole
    if first >= end:
        return None  # what the scan found lies past the block: the line cut decides
    block = raw[:end]
    if block.count(b"\n") + block.count(b"\r") + 1 >= MAX_HEADER_LINES:
        return None
    if not lf_only:
        out = _VERDICT_RUN_RE.sub(rb"\1", b"\n" + block)
        return raw if len(out) == end + 1 else out[1:] + raw[end:]
    # each verdict line, with its continuation lines, is cut out
    parts: list[bytes] = []
    last = 0
    starts = [m.start() + 1 for m in _VERDICT_LF_RE.finditer(raw, 0, end)]
    if _VERDICT_LINE_RE.match(raw):
        starts.insert(0, 0)
    for line in starts:
        eol = raw.find(b"\n", line, end)
        nxt = end if eol < 0 else eol + 1
        while nxt < end and raw[nxt] in (32, 9):  # continuation lines go with it
            eol = raw.find(b"\n", nxt, end)
            nxt = end if eol < 0 else eol + 1
        parts.append(raw[last:line])
        last = nxt
    if not parts:
        return raw
    parts.append(raw[last:])
    return b"".join(parts)


#: a line that the line loop reads as a header line (after "\n": the next)
_HEADER_LINE = rb"(?:[ \t]|From |" + _FTEXT + rb"*+[ \t]*:)"
_HEADER_LINE_RE = re.compile(_HEADER_LINE)
_NOT_HEADER_LINE_RE = re.compile(rb"\n(?!" + _HEADER_LINE + rb")")
#: a verdict header at a line start (after its "\n")
_VERDICT_LF_RE = re.compile(rb"\n" + _VERDICT_NAME, re.I)
_EOL_RE = re.compile(rb"[\r\n]")


def strip_verdict_headers(raw: bytes) -> bytes:
    """``raw`` without the header fields of :data:`VERDICT_PREFIXES` and
    :data:`VERDICT_SUBSTRINGS` (with their folded continuation lines).

    Only the header block is read: it ends at the first blank line (LF or
    CRLF), at the first line that is neither a header field, a continuation
    nor an mbox ``From `` line (kept, wherever it is: ``add_headers`` puts
    ours above it, and the stdlib parser skips it), or at the end of a
    message with no body.  Those are the stdlib parser's rules, a little
    wider (blanks before the colon), so every header it reads is checked.
    Only the first :data:`~mailsift.parse.MAX_HEADER_LINES` lines are
    looked at, the ones the parser reads (it ignores header lines past
    them), so the work is bounded whatever the size of the header block.
    A message with no such header is returned as the same object, after one
    regex scan of its header block; everything else (line endings, order,
    body) is kept byte for byte.
    """
    first_is_verdict = _VERDICT_LINE_RE.match(raw) is not None
    m = None
    if not first_is_verdict:
        # the common case first, without counting lines: the scan stops at
        # the blank line (or a verdict header) within the first _SCAN_WINDOW
        # bytes.  A match that fits the window is the first one in the whole
        # message (a match spans one line, but a blank line's two ends), so
        # a blank line found first decides as the bounded scan below would
        m = _SCAN_RE.search(raw, 0, _SCAN_WINDOW)
        if m is None:
            if len(raw) <= _SCAN_WINDOW:
                return raw
        elif m.end() - m.start() <= 3:
            return raw
    if first_is_verdict or m is not None:
        # a verdict header comes first (mail a filter has seen: half of
        # trec07p-dev): where the loop below reads the whole header block,
        # two regex passes give what it would
        out = _strip_short_block(raw, 0 if m is None else m.start() + 1)
        if out is not None:
            return out
    cut = _header_cut(raw)
    if not _VERDICT_LINE_RE.match(raw):
        m = _SCAN_RE.search(raw, 0, cut + 2)  # + 2: a blank line right at the cut still ends the block
        if m is None or m.end() - m.start() <= 3 or m.start() >= cut:  # none, or the blank line first
            return raw
    # bytes.splitlines' lines, lazily: until the header block ends, or until
    # MAX_HEADER_LINES lines are kept (the parser reads no further, so what
    # follows stays as it is), or past a budget of lines (a flood of verdict
    # headers: the rest of the header block is dropped, as the parser would
    # have ignored it)
    pieces = itertools.islice(_PIECES_RE.finditer(raw), _STRIP_BUDGET)
    kept: list[bytes] = []
    skipping = False
    consumed = n_kept = n_read = 0
    for m in pieces:
        line = m.group()
        n_read += 1
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
        elif _VERDICT_LINE_RE.match(line):
            skipping = True
        elif _FIELD_RE.match(line) or line.startswith(b"From "):
            skipping = False
            kept.append(line)
        else:
            break  # the blank line, or a line that is no header: the rest is body
        consumed += len(line)
        if not skipping:
            n_kept += line.endswith(b"\n")
            if n_kept >= MAX_HEADER_LINES:
                break
    else:
        if n_read == _STRIP_BUDGET:
            m = _HEAD_END_RE.search(raw, max(consumed - 1, 0))
            consumed = m.start() + 1 if m else len(raw)
    if consumed == sum(map(len, kept)):
        return raw  # what matched lay past the header block's real end
    return b"".join(kept) + raw[consumed:]
