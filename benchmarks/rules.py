"""Scoring latency with all the network rules on (DNS blocklists and
SPF/DKIM/DMARC), against a DNS server on 127.0.0.1 (dnslib, in this
process's threads), and the same messages with no network rules as the
baseline.

Every message gets its own client address (so the IP lists are asked once
per message, not answered from the cache), one in ten of them listed; URL
hosts and sender domains repeat as they do in real mail, so the domain
lists see the cache work.

    python benchmarks/rules.py [--zones 3] [--deadline 2.0]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

from dnslib import QTYPE, RCODE, RR, A  # noqa: E402
from dnslib.server import BaseResolver, DNSServer  # noqa: E402

from mailsift import Filter  # noqa: E402
from mailsift.config import Config  # noqa: E402
from mailsift.corpus import read_index  # noqa: E402
from mailsift.filter import DEFAULT_MODEL  # noqa: E402
from mailsift.rules import Context  # noqa: E402
from mailsift.rules.dnsbl import Zone  # noqa: E402


class Lists(BaseResolver):
    """Answers 127.0.0.2 for every tenth address's reversed name."""

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname)
        first = name.split(".", 1)[0]
        if request.q.qtype == QTYPE.A and first.isdigit() and int(first) % 10 == 0:
            reply.add_answer(RR(name, QTYPE.A, rdata=A("127.0.0.2"), ttl=300))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class _Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(flt: Filter, raws: list[bytes], with_ips: bool) -> list[float]:
    lat = []
    for n, raw in enumerate(raws):
        ip = f"81.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
        ctx = (
            Context(client_ip=ip, helo=f"mx{n % 50}.example", mail_from=f"b@s{n % 200}.example")
            if with_ips
            else None
        )
        t = time.perf_counter()
        flt.score(raw, evidence=0, context=ctx)
        lat.append(time.perf_counter() - t)
    return sorted(lat)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--zones", type=int, default=3, help="IP zones (one domain zone is added)")
    ap.add_argument("--deadline", type=float, default=2.0)
    ap.add_argument("--no-auth", action="store_true", help="leave SPF/DKIM/DMARC off")
    args = ap.parse_args()
    raws = [it.read() for it in read_index(Path(args.datasets) / "spamassassin" / "test.index")]
    port = _free_port()
    server = DNSServer(Lists(), address="127.0.0.1", port=port, logger=_Quiet())
    server.start_thread()
    try:
        base = Filter(Config(), str(DEFAULT_MODEL))
        config = Config()
        config.dns = replace(config.dns, servers=[f"127.0.0.1:{port}"], deadline=args.deadline)
        config.dnsbl = [Zone(f"RBL{i}", f"rbl{i}.test", "ip", 2.0) for i in range(args.zones)]
        config.dnsbl.append(Zone("URIBL", "uribl.test", "domain", 2.0))
        config.auth.enabled = not args.no_auth
        net = Filter(config, str(DEFAULT_MODEL))
        _run(base, raws[:100], False)  # warm up
        lat0 = _run(base, raws, False)
        lat1 = _run(net, raws, True)
    finally:
        server.stop()
    q = net.network.resolver.queries

    def line(label, lat):
        p50, p99 = 1000 * lat[len(lat) // 2], 1000 * lat[int(len(lat) * 0.99)]
        print(f"{label:34s} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   max {1000 * lat[-1]:6.1f} ms")
        return p99

    auth = "off" if args.no_auth else "on"
    print(f"{len(raws)} messages, {args.zones} IP zones + 1 domain zone, SPF/DKIM/DMARC {auth}, local DNS")
    b99 = line("no network rules (baseline)", lat0)
    n99 = line("network rules", lat1)
    print(f"DNS queries sent: {q} ({q / len(raws):.1f} per message; the rest came from the cache)")
    added = 1000 * (statistics.median(lat1) - statistics.median(lat0))
    print(f"ratio: p99 {n99 / b99:.1f}x the baseline; median added {added:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
