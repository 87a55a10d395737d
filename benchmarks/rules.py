"""Scoring latency with all the network rules on (DNS blocklists and
SPF/DKIM/DMARC), against a DNS server on 127.0.0.1 (dnslib, in this
process's threads), and the same messages with no network rules as the
baseline.

Every message gets its own client address (so the IP lists are asked once
per message, not answered from the cache), one in ten of them listed; URL
hosts and sender domains repeat as they do in real mail, so the domain
lists see the cache work.

Then large DKIM-signed messages (700 KB to 20 MB, signed by a p=reject
domain): DKIM is verified on the whole message, not the parser's 512 KiB
cut, so this is what that costs, against the same messages with the
network rules off.

    python benchmarks/rules.py [--zones 3] [--deadline 2.0] [--big-sizes 0.7,5,20]
"""

from __future__ import annotations

import argparse
import base64
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))

import dkim  # noqa: E402
from dnslib import QTYPE, RCODE, RR, TXT, A  # noqa: E402
from dnslib.server import BaseResolver, DNSServer  # noqa: E402

from mailsift import Filter  # noqa: E402
from mailsift.config import Config  # noqa: E402
from mailsift.corpus import read_index  # noqa: E402
from mailsift.filter import DEFAULT_MODEL  # noqa: E402
from mailsift.rules import Context  # noqa: E402
from mailsift.rules.dnsbl import Zone  # noqa: E402


class Lists(BaseResolver):
    """Answers 127.0.0.2 for every tenth address's reversed name, and the
    DKIM key and DMARC policy of big.example."""

    txt: dict[str, str] = {}

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname)
        first = name.split(".", 1)[0]
        if request.q.qtype == QTYPE.TXT and name.lower() in self.txt:
            value = self.txt[name.lower()]
            chunks = [value[i : i + 250] for i in range(0, len(value), 250)]
            reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=300))
        elif request.q.qtype == QTYPE.A and first.isdigit() and int(first) % 10 == 0:
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


def _key() -> tuple[bytes, str]:
    with tempfile.TemporaryDirectory() as d:
        pem = Path(d) / "k.pem"
        subprocess.run(["openssl", "genrsa", "-out", pem, "2048"], check=True, capture_output=True)
        der = subprocess.run(
            ["openssl", "rsa", "-in", pem, "-pubout", "-outform", "DER"], check=True, capture_output=True
        ).stdout
        return pem.read_bytes(), base64.b64encode(der).decode()


def _big_signed(size: int, key: bytes) -> bytes:
    line = b"The quarterly figures are attached below, as discussed on Monday.\r\n"
    raw = (
        b"From: Alice <alice@big.example>\r\nTo: bob@example.net\r\nSubject: figures\r\n"
        b"Date: Mon, 01 Jul 2024 10:00:00 +0000\r\nMessage-ID: <big@big.example>\r\n\r\n"
        + line
        * (size // len(line))
    )
    return dkim.sign(raw, b"sel", b"big.example", key, include_headers=[b"from", b"to", b"subject"]) + raw


def _big(base: Filter, net: Filter, sizes: list[float], key: bytes, repeat: int = 5) -> None:
    print(f"large signed messages (median of {repeat}; DKIM on the whole message; same deadline):")
    for mb in sizes:
        raw = _big_signed(int(mb * 1_000_000), key)
        ctx = Context(client_ip="81.2.69.160", helo="mx.big.example", mail_from="bounce@other.example")
        t0, t1 = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            base.score(raw, evidence=0)
            t0.append(time.perf_counter() - t)
            net.network.resolver._cache.clear()  # every run asks DNS again
            t = time.perf_counter()
            v = net.score(raw, evidence=0, context=ctx)
            t1.append(time.perf_counter() - t)
        names = {h.name for h in v.hits}
        verdict = (
            "DKIM_PASS+DMARC_PASS" if {"DKIM_PASS", "DMARC_PASS"} <= names else f"FAILED: {sorted(names)}"
        )
        a, b = statistics.median(t0), statistics.median(t1)
        print(
            f"  {len(raw) / 1e6:5.1f} MB   rules off {1000 * a:7.1f} ms   rules on {1000 * b:7.1f} ms"
            f"   ratio {b / a:4.1f}x   {verdict}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--zones", type=int, default=3, help="IP zones (one domain zone is added)")
    ap.add_argument("--deadline", type=float, default=2.0)
    ap.add_argument("--no-auth", action="store_true", help="leave SPF/DKIM/DMARC off")
    ap.add_argument("--big-sizes", default="0.7,5,20", help="MB of the large signed messages ('' to skip)")
    args = ap.parse_args()
    raws = [it.read() for it in read_index(Path(args.datasets) / "spamassassin" / "test.index")]
    port = _free_port()
    key, pub = _key()
    Lists.txt = {
        "sel._domainkey.big.example.": f"v=DKIM1; k=rsa; p={pub}",
        "_dmarc.big.example.": "v=DMARC1; p=reject",
    }
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
        sizes = [float(x) for x in args.big_sizes.split(",") if x.strip()]
        if sizes and not args.no_auth:
            _big(base, net, sizes, key)  # under the same dns.deadline
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
