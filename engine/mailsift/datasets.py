"""Dataset tooling: write TREC-style index files from folders, and split an
index into train/test halves (stratified at random, or by date), reporting
messages that appear in both halves, since duplicates inflate results.
"""

from __future__ import annotations

import email.utils
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .corpus import CorpusError, Labelled, read_index
from .train import message_digest

_DATE_RE = re.compile(rb"(?im)^date:[ \t]*(.+)$")


def build_index(root: str | os.PathLike, ham_globs: list[str], spam_globs: list[str]) -> list[Labelled]:
    """Files under ``root`` matching the globs, as labelled entries; a file
    matched by both a ham and a spam glob is an error (say which one it is)."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder")
    found: dict[Path, bool] = {}
    for spam, globs in ((False, ham_globs), (True, spam_globs)):
        for pattern in globs:
            for path in sorted(root.glob(pattern)):
                if not path.is_file() or path.name.startswith("."):
                    continue
                if found.get(path, spam) != spam:
                    raise CorpusError(f"{path}: matched by both a ham and a spam pattern")
                found[path] = spam
    return [Labelled(spam, path) for path, spam in sorted(found.items())]


def write_index(items: list[Labelled], out: str | os.PathLike) -> None:
    """Paths are written relative to the index file's folder, as TREC does."""
    out = Path(out)
    base = out.parent.resolve()
    lines = []
    for it in items:
        path = it.path.resolve()
        try:
            rel = path.relative_to(base)
        except ValueError:
            rel = Path(os.path.relpath(path, base))
        lines.append(f"{'spam' if it.spam else 'ham'} {rel.as_posix()}\n")
    out.write_text("".join(lines))


def message_date(raw: bytes) -> float | None:
    """Seconds since the epoch from the Date header (None if absent or
    unparseable)."""
    m = _DATE_RE.search(raw[:65536].split(b"\n\n", 1)[0])
    if not m:
        return None
    try:
        return email.utils.parsedate_to_datetime(m.group(1).decode("ascii", "replace").strip()).timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


#: the orders :func:`ordered` knows, for command-line choices
ORDERS = ("index", "date", "shuffle")


def ordered(items: list[Labelled], how: str = "index", seed: int = 0) -> list[Labelled]:
    """The order an online run meets mail in: the index's own (TREC indexes
    are chronological), by Date header (undated first, as split does), or
    shuffled with a seed.  A corpus indexed class by class (all ham, then
    all spam) must not be run online in index order: the learning curve
    would measure the ordering, not the filter."""
    if how == "index":
        return list(items)
    if how == "shuffle":
        out = list(items)
        random.Random(seed).shuffle(out)
        return out
    if how == "date":
        dated = [(message_date(it.read()), n, it) for n, it in enumerate(items)]
        return [it for _, _, it in sorted(dated, key=lambda p: (p[0] is not None, p[0] or 0.0, p[1]))]
    raise ValueError(f"unknown order {how!r}: index, date or shuffle")


@dataclass
class Split:
    train: list[Labelled]
    test: list[Labelled]
    duplicates: int  # test messages whose subject+body also occur in train
    undated: int = 0


def split(items: list[Labelled], ratio: float = 0.5, seed: int = 0, by_date: bool = False) -> Split:
    """``ratio`` of each class to train.  At random (stratified, seeded), or
    by date: the oldest ``ratio`` of each class trains, the newest tests, as
    a filter meets mail in time; undated messages go to train."""
    if not 0 < ratio < 1:
        raise ValueError("ratio must be between 0 and 1")
    train: list[Labelled] = []
    test: list[Labelled] = []
    undated = 0
    for spam in (False, True):
        group = [it for it in items if it.spam == spam]
        if by_date:
            dated = [(message_date(it.read()), it) for it in group]
            undated += sum(d is None for d, _ in dated)
            group = [it for _, it in sorted(dated, key=lambda p: (p[0] is not None, p[0] or 0.0))]
        else:
            random.Random(seed).shuffle(group)
        cut = round(len(group) * ratio)
        train += group[:cut]
        test += group[cut:]
    seen = {message_digest(it.read()) for it in train}
    dupes = sum(message_digest(it.read()) in seen for it in test)
    return Split(train, test, dupes, undated)


def split_index(index: str | os.PathLike, **kwargs) -> Split:
    return split(read_index(index), **kwargs)
