"""``mailsift filter``: a message in, the same message out with the verdict
headers added, for delivery-time filters (procmail ``:0fw``, maildrop
``xfilter``, Exim ``transport_filter``).

Those programs hand the message to a pipe and deliver whatever comes back,
and most treat a failing filter as a delivery failure (Exim defers, maildrop
gives up), so the one rule here is: **the message always comes back**.  A
bad config, a corrupt model, a scoring bug or a message that takes longer
than ``proxy.scoring_deadline`` gives the message unchanged plus
``X-Spam-Status: Unknown ...`` (the marking ``mailsift serve`` uses when
scoring fails) and a one-line reason on stderr; the exit status is 0.  The
headers are the ones ``serve`` adds, from the same ``report`` functions.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .filter import Filter
from .report import add_headers_after_from_line, spam_headers
from .rules import Context
from .score import Verdict


class ScoringTimeout(BaseException):
    """Scoring took longer than the deadline.  A BaseException, like
    KeyboardInterrupt, so that the rules' own ``except Exception`` guards
    cannot swallow it and let scoring run on."""


@dataclass
class Filtered:
    """The message to deliver, its verdict (None: scoring failed) and why it failed."""

    message: bytes
    verdict: Verdict | None
    error: str = ""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise ScoringTimeout in the main thread after ``seconds`` (SIGALRM;
    a no-op off the main thread, where signals cannot be delivered)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise ScoringTimeout(f"scoring took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def filter_message(
    raw: bytes,
    make_filter: Callable[[], tuple[Filter, float]],
    context: Context | None = None,
) -> Filtered:
    """Score ``raw`` and add the headers; never raises for a bad message,
    config or model.  ``make_filter`` returns the Filter and the scoring
    deadline in seconds; it runs inside the protection, so a config or model
    error also yields the message marked Unknown."""
    verdict, error = None, ""
    try:
        flt, seconds = make_filter()
        with deadline(seconds):
            verdict = flt.score(raw, evidence=3, context=context)
    except (Exception, ScoringTimeout) as exc:  # the message must come out whatever failed
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:  # procmail hands filters the mbox "From " line too; it stays first
        return Filtered(add_headers_after_from_line(raw, spam_headers(verdict)), verdict, error)
    except Exception as exc:  # not even the headers: the message as it came
        return Filtered(raw, None, error or f"adding headers failed: {type(exc).__name__}: {exc}")
