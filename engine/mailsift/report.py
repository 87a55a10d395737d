r"""Verdict -> the headers added to a scanned message.

``X-Spam-Flag``, ``X-Spam-Score`` and ``X-Spam-Status`` follow SpamAssassin's
format so existing Sieve and procmail rules keep working;
``X-Spam-Level`` carries SpamAssassin's stars (one ``*`` per whole point,
at most 50), for procmail recipes like ``^X-Spam-Level: \*\*\*\*\*``;
``X-Mailsift-Report`` carries the explanation.  Every ``X-Spam-*`` header
already in the message is removed first (including other filters' ones such
as ``X-Spam-Checker-Version``): a spammer must not be able to pre-set
``X-Spam-Flag: NO``, and a reader must not mistake a stale header for ours.
"""

from __future__ import annotations

import re

from .score import Verdict

OUR_HEADERS = ("x-spam-flag", "x-spam-score", "x-spam-status", "x-spam-level", "x-mailsift-report")
#: headers removed from incoming mail: every X-Spam-* (ours and anyone
#: else's) and our own report
_OURS_RE = re.compile(rb"^(?:x-spam-[!-9;-~]*|x-mailsift-report)[ \t]*:", re.I)
_MAX_REPORT = 900
#: SpamAssassin's _STARS(*)_ stops at 50 "to stay on the right side of the RFCs"
MAX_STARS = 50


def spam_level(score: float) -> str:
    """SpamAssassin's ``X-Spam-Level`` value: one ``*`` per whole point
    (truncated, so 4.9 is ``****``), none below 1, at most 50."""
    if score != score:  # NaN
        return ""
    return "*" * int(max(0.0, min(float(MAX_STARS), score)))


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
    of ours already in its header block; line endings follow the message's."""
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    head_end = _header_end(raw)
    head, body = raw[:head_end], raw[head_end:]
    kept: list[bytes] = []
    skipping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and skipping:
            continue  # a folded continuation of a removed header
        skipping = bool(_OURS_RE.match(line))
        if not skipping:
            kept.append(line)
    new = b"".join(f"{name}: {value}".encode("ascii", "replace") + eol for name, value in headers)
    return new + b"".join(kept) + body


def _header_end(raw: bytes) -> int:
    """Offset where the header block ends (at its blank line), or the end."""
    ends = [i + len(sep) // 2 for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep)) >= 0]
    return min(ends) if ends else len(raw)
