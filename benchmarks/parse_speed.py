"""``parse()`` against the parser of an earlier commit, in the same run.

Loads ``engine/mailsift/parse.py`` of ``--baseline`` (default: 2a138d2, the
stdlib-based parser before the linear rewrite) from git into a module of its
own, parses the same messages with both, and prints the median and mean time
per message of each, their ratio, and how many messages differ in any field
of ``ParsedMessage`` (the rewrite is meant to split mail exactly as before).

    python benchmarks/parse_speed.py [--corpus trec|spamassassin] [-n 3000]
                                     [--repeat 3] [--baseline REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

from mailsift.parse import parse  # noqa: E402

FIELDS = (
    "raw_headers subject from_addr from_name reply_to return_path to_addrs text html_parts urls "
    "mime_types charsets attachments defects truncated"
).split()


def load_baseline(rev: str):
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:engine/mailsift/parse.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_parse.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_parse", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_parse"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def messages(corpus: str, n: int, seed: int, datasets: Path) -> list[bytes]:
    if corpus == "trec":
        files = sorted(Path("/var/tmp/trec07p/data").glob("inmail.*"))
        if not files:
            sys.exit("trec07p-dev is not unpacked at /var/tmp/trec07p (see its README: unpack.sh)")
        return [f.read_bytes() for f in random.Random(seed).sample(files, min(n, len(files)))]
    from mailsift.corpus import read_index

    items = read_index(datasets / "spamassassin" / "all.index")
    return [it.read() for it in random.Random(seed).sample(items, min(n, len(items)))]


def timed(fn, raws: list[bytes]) -> list[float]:
    out = []
    for raw in raws:
        t = time.perf_counter()
        fn(raw)
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["trec", "spamassassin"], default="trec")
    ap.add_argument("-n", type=int, default=3000, help="messages (a seeded sample)")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes; the median pass is reported")
    ap.add_argument("--baseline", default="2a138d2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    old = load_baseline(args.baseline)
    raws = messages(args.corpus, args.n, args.seed, Path(args.datasets))
    differ = {f: 0 for f in FIELDS}
    for raw in raws:
        a, b = old.parse(raw), parse(raw)
        for f in FIELDS:
            differ[f] += getattr(a, f) != getattr(b, f)
    passes = []
    for _ in range(args.repeat):  # interleaved, so both see the same machine load
        passes.append((timed(old.parse, raws), timed(parse, raws)))
    passes.sort(key=lambda p: statistics.median(p[0]) / statistics.median(p[1]))
    o, n = passes[len(passes) // 2]
    om, nm = statistics.median(o) * 1e6, statistics.median(n) * 1e6
    oa, na = statistics.mean(o) * 1e6, statistics.mean(n) * 1e6
    print(f"{len(raws)} {args.corpus} messages, median of {args.repeat} interleaved passes, one CPU")

    def p99(ts: list[float]) -> float:
        return sorted(ts)[len(ts) * 99 // 100] * 1e6

    print(f"baseline {args.baseline}: median {om:6.1f} us  mean {oa:6.1f} us  p99 {p99(o):7.1f} us")
    print(f"this tree:        median {nm:6.1f} us  mean {na:6.1f} us  p99 {p99(n):7.1f} us")
    print(f"ratio: {om / nm:.2f}x faster (median), {oa / na:.2f}x (mean)")
    changed = {f: c for f, c in differ.items() if c}
    worst = max(changed.values(), default=0)
    print(f"messages with a field different: at least {worst} of {len(raws)} {changed or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
