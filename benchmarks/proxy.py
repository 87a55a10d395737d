"""Throughput, latency and memory of the SMTP content filter over loopback.

N concurrent SMTP clients (persistent sessions, like Postfix's connection
cache) send the development corpus's test split through `mailsift serve`
to a counting sink.  The same run is repeated through the same proxy with
scoring switched off (a plain relay), so the cost of scoring is a ratio.
With ``--soak N`` the scoring run sends N messages and reports the proxy's
RSS (proxy + scoring workers) along the way.

    python benchmarks/proxy.py [--clients 8] [--messages 3023] [--soak 20000]

Everything runs on this machine: sink and proxy in their own processes,
clients in this one.  Load is bounded by --messages/--soak and stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

import aiosmtplib  # noqa: E402

from mailsift.corpus import read_index  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sink(port: int, ready) -> None:
    from aiosmtpd.controller import Controller

    from mailsift.proxy import LenientSMTP

    class Count:
        n = 0

        async def handle_DATA(self, server, session, envelope):
            Count.n += 1
            return "250 OK"

    class C(Controller):
        def factory(self):
            return LenientSMTP(self.handler, **self.SMTP_kwargs)

    c = C(Count(), hostname="127.0.0.1", port=port)
    c.start()
    ready.set()
    while True:
        time.sleep(3600)


def _proxy(port: int, relay: int, scoring: bool, ready) -> None:
    import logging
    from dataclasses import replace

    from mailsift import proxy
    from mailsift.config import Config

    logging.basicConfig(level=logging.WARNING)
    if not scoring:

        async def no_scoring(self, raw, deadline, context=None):
            return None

        proxy.Scorer.score = no_scoring
    config = Config()
    config.proxy = replace(config.proxy, listen=f"127.0.0.1:{port}", relay=f"127.0.0.1:{relay}")

    async def run():
        server = proxy.ProxyServer(config)
        await server.start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(run())


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _kill_tree(pid: int) -> None:
    for child in _children(pid):
        os.kill(child, 9)
    os.kill(pid, 9)


def _rss_mb(pid: int) -> float:
    """RSS of a process and its children (the scoring workers), MiB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


async def _drive(
    port: int, messages: list[bytes], clients: int, on_progress=None
) -> tuple[float, list[float]]:
    queue: asyncio.Queue = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)
    latencies: list[float] = []
    done = 0

    async def client() -> None:
        nonlocal done
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False)
        await smtp.connect()
        while True:
            try:
                raw = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            t = time.perf_counter()
            await smtp.sendmail("bench@example.org", ["rcpt@example.net"], raw)
            latencies.append(time.perf_counter() - t)
            done += 1
            if on_progress:
                on_progress(done)
        await smtp.quit()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, latencies


def _run(label: str, scoring: bool, messages: list[bytes], clients: int, sink_port: int, soak_every=0):
    port = _free_port()
    ready = mp.Event()
    proc = mp.Process(target=_proxy, args=(port, sink_port, scoring, ready))  # not daemon: it has workers
    proc.start()
    ready.wait(60)
    samples: list[tuple[int, float]] = []

    def progress(n: int) -> None:
        if soak_every and n % soak_every == 0:
            samples.append((n, _rss_mb(proc.pid)))

    asyncio.run(_drive(port, messages[: clients * 20], clients))  # warm up workers and caches
    seconds, lat = asyncio.run(_drive(port, messages, clients, progress))
    rss = _rss_mb(proc.pid)
    _kill_tree(proc.pid)
    proc.join(10)
    lat.sort()
    result = {
        "label": label,
        "msgs_per_s": len(messages) / seconds,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
        "rss_mb": rss,
        "samples": samples,
    }
    print(
        f"{label:28s} {result['msgs_per_s']:7.0f} msgs/s   p50 {result['p50_ms']:6.1f} ms   "
        f"p99 {result['p99_ms']:6.1f} ms   RSS {rss:6.0f} MiB (proxy + workers)",
        flush=True,
    )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument(
        "--messages", type=int, default=3023, help="messages per run (cycled from the test split)"
    )
    ap.add_argument("--soak", type=int, default=0, help="also run a scoring soak of this many messages")
    args = ap.parse_args()
    corpus = [it.read() for it in read_index(Path(args.datasets) / "spamassassin" / "test.index")]
    messages = [corpus[i % len(corpus)] for i in range(args.messages)]
    sink_port = _free_port()
    ready = mp.Event()
    sink = mp.Process(target=_sink, args=(sink_port, ready), daemon=True)
    sink.start()
    ready.wait(30)
    print(f"{len(messages)} messages, {args.clients} concurrent clients, {os.cpu_count()} cores")
    relay = _run("plain relay (scoring off)", False, messages, args.clients, sink_port)
    scored = _run("mailsift serve (scoring)", True, messages, args.clients, sink_port)
    print(
        f"ratio: scoring costs {relay['msgs_per_s'] / scored['msgs_per_s']:.2f}x the time of plain relaying; "
        f"p99 {scored['p99_ms'] / relay['p99_ms']:.2f}x"
    )
    if args.soak:
        soak_msgs = [corpus[i % len(corpus)] for i in range(args.soak)]
        every = max(args.soak // 20, 1)
        soak = _run(
            f"soak ({args.soak} messages)", True, soak_msgs, args.clients, sink_port, soak_every=every
        )
        samples = soak["samples"]
        base = next((rss for n, rss in samples if n >= args.soak // 10), samples[0][1])
        peak = max(rss for _, rss in samples)
        print("RSS along the soak (messages: MiB): " + ", ".join(f"{n}: {rss:.0f}" for n, rss in samples))
        print(
            f"RSS growth after warm-up ({args.soak // 10} messages) to peak: "
            f"{100 * (peak - base) / base:.1f}%"
        )
    sink.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
