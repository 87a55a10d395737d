"""Does one 50 MB message stall every other session of `mailsift serve`?

A probe sends a small message through the proxy every 0.3 s (new session
each time, as a client without a connection cache would) while another
process sends one large message; the probe's round trips that overlap the
large message are reported (median, max), and the large message's own
time.  Run once per engine tree, in the same run, so old and new are
measured under the same load:

    python benchmarks/big_message_latency.py --tree /work/main/engine --tree engine

Cases: a 51 MB header block of 3.5M unique ``X-H<n>: v`` headers, and a
45 MB plain body.  The next hop is a minimal chunked SMTP sink (its own
process, no per-line work), so what is measured is the proxy.  Everything
on 127.0.0.1; the load is one large message and a probe per 0.3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: probe\r\n"
    b"Message-ID: <p@example.org>\r\n\r\nsmall probe message\r\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sink(port: int) -> None:
    """The next hop: an SMTP server that reads DATA in chunks."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink\r\n")
        buf = b""
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = line[:4].upper()
            if cmd in (b"EHLO", b"HELO"):
                writer.write(b"250-sink\r\n250 8BITMIME\r\n")
            elif cmd == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                buf = b""
                while not buf.endswith(b"\r\n.\r\n"):
                    chunk = await reader.read(1 << 20)
                    if not chunk:
                        return
                    buf = buf[-4:] + chunk
                writer.write(b"250 2.0.0 queued\r\n")
            elif cmd == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(session, "127.0.0.1", port, limit=1 << 20)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _send_big(port: int, path: str, result) -> None:
    raw = Path(path).read_bytes()
    t = time.perf_counter()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=600) as c:
            c.sendmail("big@example.org", ["b@example.net"], raw)
        result["code"] = 250
    except smtplib.SMTPException as exc:
        result["code"] = str(exc)[:100]
    result["seconds"] = time.perf_counter() - t


def _wait_port(port: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def _probe_once(port: int) -> float:
    t = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as c:
        c.sendmail("probe@example.org", ["b@example.net"], SMALL)
    return time.perf_counter() - t


def run(tree: str, case: str, path: str, sink_port: int) -> dict:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": tree, "XDG_CONFIG_HOME": tempfile.mkdtemp()}
    env.pop("MAILSIFT_CONFIG", None)
    log = open(os.devnull, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailsift.cli", "serve", "--listen", f"127.0.0.1:{port}",
         "--relay", f"127.0.0.1:{sink_port}", "--workers", "2"],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        _wait_port(port, 60)
        idle = [_probe_once(port) for _ in range(5)]
        ctx = mp.get_context("spawn")
        result = ctx.Manager().dict()
        big = ctx.Process(target=_send_big, args=(port, path, result))
        big.start()
        probes: list[float] = []
        stop = threading.Event()

        def prober() -> None:
            while not stop.is_set():
                start = time.monotonic()
                probes.append(_probe_once(port))
                stop.wait(max(0.0, 0.3 - (time.monotonic() - start)))

        th = threading.Thread(target=prober)
        th.start()
        big.join(900)
        stop.set()
        th.join(300)
        return {
            "tree": tree, "case": case, "idle_ms": statistics.median(idle) * 1e3,
            "median_ms": statistics.median(probes) * 1e3, "max_ms": max(probes) * 1e3,
            "probes": len(probes), "big_s": result.get("seconds", float("nan")), "big": result.get("code"),
        }  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", help="engine directory to run (repeatable); default: this one")
    ap.add_argument("--case", action="append", choices=("headers", "body"))
    args = ap.parse_args()
    trees = args.tree or [str(ROOT / "engine")]
    tmp = Path(tempfile.mkdtemp())
    files = {
        "headers": b"".join(b"X-H%d: v\r\n" % i for i in range(3_500_000)) + b"\r\nbody\r\n",
        "body": b"From: a@example.org\r\nSubject: big\r\n\r\n"
        + b"plain body line of some text\r\n" * 1_550_000,
    }
    sink_port = _free_port()
    sink = mp.get_context("spawn").Process(target=_sink, args=(sink_port,), daemon=True)
    sink.start()
    _wait_port(sink_port, 30)
    print(f"{'tree':<28} {'case':<8} {'MB':>5} {'idle ms':>8} {'median ms':>10} {'max ms':>9} "
          f"{'probes':>6} {'big s':>6}  big reply")  # fmt: skip
    for case in args.case or list(files):
        path = tmp / f"{case}.eml"
        path.write_bytes(files[case])
        for tree in trees:
            r = run(tree, case, str(path), sink_port)
            print(f"{r['tree'][-28:]:<28} {case:<8} {len(files[case]) / 1e6:5.1f} {r['idle_ms']:8.1f} "
                  f"{r['median_ms']:10.1f} {r['max_ms']:9.1f} {r['probes']:6d} {r['big_s']:6.2f}  {r['big']}",
                  flush=True)  # fmt: skip
    sink.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
