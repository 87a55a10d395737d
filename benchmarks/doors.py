"""The doors of ``mailsift serve``: what a request through spamc or HTTP
costs over scoring in-process, and how long learning through the service takes.

    python benchmarks/doors.py [--messages 200] [--repeat 3]

Trains a model on 1,500 ham + 1,500 spam of the trec07p-dev train half
(unpacked by its own script into the cache folder), starts ``mailsift serve
--spamd --http --workers 1`` on loopback, and scores the first N test-half
messages: in this process with ``Filter.score`` (the baseline), through
Debian's ``spamc -c`` (one process and one connection per message, as a
procmail or Exim call makes) and through ``POST /score``.  Then times one
``spamc -L spam`` and 8 concurrent ones (different messages).  Prints medians
over ``--repeat`` passes and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("MAILSIFT_DATASETS", ROOT.parent / "shared" / "datasets"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("spamc") is None:
        sys.exit("spamc not installed (apt-get install spamc)")

    from mailsift.config import Config
    from mailsift.corpus import read_index
    from mailsift.filter import Filter
    from mailsift.train import PROFILES, collect, fit_model, labelled_stream

    trec = Path(
        subprocess.run(
            ["bash", str(DATASETS / "trec07p-dev" / "unpack.sh")], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    )
    train = read_index(trec / "train.index")
    pick = [i for i in train if not i.spam][:1500] + [i for i in train if i.spam][:1500]
    profile = PROFILES["full"]
    ts = collect(labelled_stream(index=pick), profile.features, show_progress=False)
    model, _ = fit_model(ts, profile.features, profile.params, folds=2)
    tmp = Path(tempfile.mkdtemp(prefix="mailsift-doors-"))
    model_path = tmp / "model.npz"
    model.save(model_path)
    raws = [i.path.read_bytes() for i in read_index(trec / "test.index")[: args.messages]]

    flt = Filter(Config(), str(model_path))
    spamd, http = free_port(), free_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "cfg"), "XDG_DATA_HOME": str(tmp / "d")}
    log = tmp / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailsift.cli", "serve", "--spamd", f"127.0.0.1:{spamd}",
         "--http", f"127.0.0.1:{http}", "--workers", "1", "--model", str(model_path)],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("listening on") < 2:  # one line per door
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(log.read_text())
            time.sleep(0.1)

        def in_process():
            for raw in raws:
                flt.score(raw, evidence=3)

        def via_spamc():
            for raw in raws:
                subprocess.run(["spamc", "-p", str(spamd), "-c"], input=raw, capture_output=True, check=False)

        def via_http():
            for raw in raws:
                req = urllib.request.Request(f"http://127.0.0.1:{http}/score", data=raw, method="POST")
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()

        rates = {}
        for name, fn in (("in-process Filter.score", in_process), ("spamc -c", via_spamc),
                         ("POST /score", via_http)):  # fmt: skip
            fn()  # warm: the pool's worker starts on the first message
            passes = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                fn()
                passes.append(len(raws) / (time.perf_counter() - start))
            rates[name] = statistics.median(passes)

        def learn(raw: bytes) -> float:
            start = time.perf_counter()
            subprocess.run(
                ["spamc", "-p", str(spamd), "-L", "spam"], input=raw, capture_output=True, check=True
            )
            return time.perf_counter() - start

        ham = [i.path.read_bytes() for i in read_index(trec / "test.index") if not i.spam][
            : 5 + 8 * args.repeat
        ]
        one = statistics.median(learn(raw) for raw in ham[:5])
        eight = []
        for r in range(args.repeat):
            batch = ham[5 + 8 * r : 13 + 8 * r]
            start = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(learn, batch))
            eight.append(time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    base = rates["in-process Filter.score"]
    print(f"{len(raws)} messages of the trec07p-dev test half, median of {args.repeat} passes, --workers 1")
    for name, rate in rates.items():
        print(f"  {name:<26} {rate:8.1f} msgs/s   {rate / base:6.3f} x in-process")
    print(f"  one spamc -L spam          {one:8.2f} s (median of 5)")
    print(f"  8 concurrent spamc -L spam {statistics.median(eight):8.2f} s (median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
