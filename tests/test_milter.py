"""The milter door over a real TCP connection on loopback, speaking the
milter protocol the way Postfix does: negotiation, macros, headers, body,
the end-of-message changes and verdict, and protocol abuse."""

from __future__ import annotations

import asyncio
import logging
import random
import struct

import pytest
from conftest import HAM

from mailsift.config import Config, ConfigError, validate
from mailsift.serve.milter import MAX_PACKET, MilterDoor, packet

#: everything Postfix 3.7 offers (milter_protocol = 6)
ALL_ACTIONS = 0x1FF
ALL_STEPS = 0x1FFFFF
FINAL = set(b"acdrty")  # accept, continue, discard, reject, tempfail, replycode


class MilterClient:
    """The MTA side of the protocol, for tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> MilterClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.writer.write(packet(cmd, data))
        await self.writer.drain()

    async def read(self) -> tuple[bytes, bytes]:
        (length,) = struct.unpack(">I", await asyncio.wait_for(self.reader.readexactly(4), 10))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return body[:1], body[1:]

    async def ask(self, cmd: bytes, data: bytes = b"") -> tuple[bytes, bytes]:
        await self.send(cmd, data)
        return await self.read()

    async def negotiate(self, actions: int = ALL_ACTIONS, steps: int = ALL_STEPS) -> tuple[int, int, int]:
        cmd, data = await self.ask(b"O", struct.pack(">III", 6, actions, steps))
        assert cmd == b"O"
        return struct.unpack(">III", data[:12])

    async def closed(self) -> bool:
        """True once the milter has closed the connection."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 10) == b""
        except ConnectionError:
            return True

    async def message(
        self, raw: bytes, mail_from: str = "<sender@outside.example>", rcpts=("<bob@example.net>",),
        mail_macros: dict | None = None,
    ) -> list[tuple[bytes, bytes]]:  # fmt: skip
        """One transaction; returns the end-of-message replies (changes, then the verdict)."""
        if mail_macros:
            await self.send(
                b"D", b"M" + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in mail_macros.items())
            )
        assert (await self.ask(b"M", mail_from.encode() + b"\0"))[0] == b"c"
        for rcpt in rcpts:
            assert (await self.ask(b"R", rcpt.encode() + b"\0"))[0] == b"c"
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        lines: list[bytes] = []
        for line in head.split(b"\n"):
            if line[:1] in (b" ", b"\t") and lines:
                lines[-1] += b"\r\n" + line
            else:
                lines.append(line)
        for line in lines:
            name, _, value = line.partition(b":")
            assert (await self.ask(b"L", name + b"\0" + value.lstrip() + b"\0"))[0] == b"c"
        assert (await self.ask(b"N"))[0] == b"c"
        body = body.replace(b"\n", b"\r\n")
        for i in range(0, len(body), 65535):
            assert (await self.ask(b"B", body[i : i + 65535]))[0] == b"c"
        await self.send(b"E")
        replies = []
        while True:
            cmd, data = await self.read()
            replies.append((cmd, data))
            if cmd[0] in FINAL:
                return replies

    async def session(self, client_ip: str = "192.0.2.7", helo: str = "mx.outside.example") -> None:
        await self.negotiate()
        await self.send(b"D", b"C" + b"j\0mx.test.example\0_\0" + f"client [{client_ip}]".encode() + b"\0")
        connect = b"client.outside.example\0" + b"4" + struct.pack(">H", 4567) + client_ip.encode() + b"\0"
        assert (await self.ask(b"C", connect))[0] == b"c"
        assert (await self.ask(b"H", helo.encode() + b"\0"))[0] == b"c"

    def close(self) -> None:
        self.writer.close()


class RecordingService:
    """A real scoring service that also remembers the contexts it got."""

    def __init__(self, inner):
        self.inner, self.config, self.calls, self.users = inner, inner.config, [], []

    async def score(self, raw, context=None, door="", deadline=None, user=None):
        self.calls.append((raw, context, door))
        self.users.append(user)
        return await self.inner.score(raw, context, door, deadline, user)


class BrokenService:
    """Failure injection: a scorer that raises, or one that never answers."""

    def __init__(self, config: Config, hang: bool = False):
        self.config, self.hang = config, hang

    async def score(self, raw, context=None, door="", deadline=None, user=None):
        if self.hang:
            await asyncio.sleep(3600)
        raise RuntimeError("model file vanished")


def run_with(service, test):
    """Start the door on a free loopback port, run ``test(port)``, stop it."""

    async def main():
        door = MilterDoor(service, "127.0.0.1", 0)
        await door.start()
        try:
            return await test(door.port)
        finally:
            door.close()
            await door.stop(grace=1)

    return asyncio.run(main())


def headers_added(replies) -> dict[str, str]:
    out = {}
    for cmd, data in replies:
        if cmd == b"h":
            name, value, _ = data.split(b"\0")
            out[name.decode()] = value.decode()
    return out


def headers_deleted(replies) -> list[tuple[str, int]]:
    out = []
    for cmd, data in replies:
        if cmd == b"m":
            (index,) = struct.unpack(">I", data[:4])
            name, value, _ = data[4:].split(b"\0")
            assert value == b""  # empty value = delete
            out.append((name.decode(), index))
    return out


def test_milter_negotiates_version_6_with_header_actions_only(scoring_service):
    async def test(port):
        c = await MilterClient.open(port)
        version, actions, steps = await c.negotiate()
        c.close()
        return version, actions, steps

    version, actions, steps = run_with(scoring_service(), test)
    assert version == 6
    assert actions == 0x01 | 0x10  # ADDHDRS | CHGHDRS, nothing else
    assert steps & ~ALL_STEPS == 0  # only steps the MTA offered to leave out
    assert steps & (0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20) == 0  # connect..headers and body: wanted


def test_milter_passes_ham_with_spam_headers_and_deletes_forged_ones(scoring_service):
    forged = b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-9\r\nReceived: from a by b\r\nx-spam-flag: NO\r\n"

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        replies = await c.message(forged + HAM)
        c.close()
        return replies

    replies = run_with(scoring_service(), test)
    assert replies[-1] == (b"a", b"")
    # every occurrence, highest index first, so deleting one never shifts the next
    assert headers_deleted(replies) == [("x-spam-flag", 2), ("X-Spam-Flag", 1), ("X-Spam-Status", 1)]
    added = headers_added(replies)
    assert added["X-Spam-Status"].startswith("No, score=")
    assert "X-Spam-Score" in added and "X-Mailsift-Report" in added and "X-Spam-Flag" not in added
    assert all(cmd != b"m" for cmd, _ in replies[replies.index(next(r for r in replies if r[0] == b"h")) :])


def test_milter_message_line_carries_the_smtp_doors_structured_fields(scoring_service, caplog):
    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        replies = await c.message(HAM)
        c.close()
        return replies

    with caplog.at_level(logging.INFO, logger="mailsift.milter"):
        run_with(scoring_service(), test)
    (rec,) = [r for r in caplog.records if getattr(r, "mailsift", {}).get("event") == "message"]
    fields = rec.mailsift
    assert fields["door"] == "milter" and fields["outcome"] == "accept"
    assert fields["score"] is not None and fields["action"] == "accept" and fields["size"] > 0
    assert {"client", "helo", "from", "to", "hits", "ms", "queue_id"} <= set(fields)


def test_milter_deletes_every_incoming_x_spam_header_not_only_ours(scoring_service):
    """As the SMTP and spamd doors do (report.add_headers): another filter's
    X-Spam-Report or X-Spam-Checker-Version, or a forged X-Spam-Virus, must
    not reach the mailbox beside our verdict."""
    forged = (
        b"X-Spam-Report: forged\r\nX-Spam-Checker-Version: SpamAssassin 9.9\r\n"
        b"X-Spam-Virus: No\r\nX-Mailsift-Report: forged\r\nX-Spamless: kept\r\nX-Spam: kept\r\n"
    )

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        replies = await c.message(forged + HAM)
        c.close()
        return replies

    deleted = headers_deleted(run_with(scoring_service(), test))
    assert sorted(deleted) == [
        ("X-Mailsift-Report", 1), ("X-Spam-Checker-Version", 1), ("X-Spam-Report", 1), ("X-Spam-Virus", 1),
    ]  # fmt: skip


def test_milter_rebuilds_the_message_and_feeds_the_session_to_the_rules(scoring_service):
    service = RecordingService(scoring_service())
    body = b"line one\r\n" + b"x" * 200_000 + b"\r\nend\r\n"  # several body chunks

    async def test(port):
        c = await MilterClient.open(port)
        await c.session(client_ip="198.51.100.23", helo="mail.sender.example")
        await c.message(HAM.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body, mail_from="<alice@example.org>")
        c.close()

    run_with(service, test)
    ((raw, context, door),) = service.calls
    assert door == "milter"
    assert raw.endswith(b"\r\n\r\n" + body) and raw.startswith(
        b"From: alice@example.org\r\nTo: bob@example.net\r\n"
    )
    assert (context.client_ip, context.helo, context.mail_from) == (
        "198.51.100.23", "mail.sender.example", "alice@example.org",
    )  # fmt: skip
    assert context.authenticated is False


def test_milter_scores_with_the_single_recipients_model_else_the_sites(scoring_service):
    service = RecordingService(scoring_service())

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        await c.message(HAM, rcpts=("<Alice@Example.NET>",))
        await c.message(HAM, rcpts=("<alice@example.net>", "<bob@example.net>"))
        await c.message(HAM, rcpts=("<a\x01b@example.net>",))  # no usable user name: the site's
        await c.message(HAM, rcpts=('<"o\'brien"@Example.NET>',))  # any mailbox name; quoting is no change
        c.close()

    run_with(service, test)
    assert service.users == ["alice@example.net", None, None, "o'brien@example.net"]


def test_milter_names_a_recipient_by_users_delimiter_and_local_domains(scoring_service):
    """[users]: alice+shop@ is alice (her model and lists, not a new user's);
    a local domain's recipient is its local part; "" keeps the address."""
    from mailsift.config import UsersConfig

    def users_for(naming: UsersConfig, rcpts: list[tuple[str, ...]]) -> list:
        config = Config()
        config.users = naming
        service = RecordingService(scoring_service(config))

        async def test(port):
            c = await MilterClient.open(port)
            await c.session()
            for r in rcpts:
                await c.message(HAM, rcpts=r)
            c.close()

        run_with(service, test)
        return service.users

    rcpts = [
        ("<alice+shop@Example.NET>",),
        ("<alice+a@example.net>", "<alice-b@example.net>"),
        ("<+x@example.net>",),  # nothing before the delimiter: not cut (as Postfix)
        ('<"alice+x"@example.net>',),
        ("<alice@other.example>",),
    ]
    assert users_for(UsersConfig(), rcpts) == [
        "alice@example.net", None, "+x@example.net", "alice@example.net", "alice@other.example",
    ]  # fmt: skip
    assert users_for(UsersConfig(recipient_delimiter="+-"), rcpts)[1] == "alice@example.net"
    assert users_for(UsersConfig(recipient_delimiter=""), rcpts)[:2] == ["alice+shop@example.net", None]
    assert users_for(UsersConfig(local_domains=["example.NET."]), rcpts) == [
        "alice", None, "+x", "alice", "alice@other.example",
    ]  # fmt: skip


def test_milter_marks_authenticated_submissions(scoring_service):
    service = RecordingService(scoring_service())

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        await c.message(HAM, mail_macros={"i": "4QX1", "{auth_type}": "PLAIN", "{auth_authen}": "alice"})
        await c.message(HAM)  # the next transaction, not authenticated
        c.close()

    run_with(service, test)
    assert [call[1].authenticated for call in service.calls] == [True, False]


def test_milter_rejects_at_the_reject_threshold_with_550_571(scoring_service):
    config = Config()
    config.thresholds.add_header = config.thresholds.reject = -1000.0  # everything reaches reject

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        replies = await c.message(HAM)
        c.close()
        return replies

    replies = run_with(scoring_service(config), test)
    cmd, data = replies[-1]
    assert cmd == b"y" and data.startswith(b"550 5.7.1 ") and data.endswith(b"\0")


def test_milter_without_reject_passes_spam_marked(scoring_service):
    config = Config()
    config.thresholds.add_header = config.thresholds.reject = -1000.0
    config.milter.reject = False

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        return await c.message(HAM)

    replies = run_with(scoring_service(config), test)
    assert replies[-1][0] == b"a" and headers_added(replies)["X-Spam-Flag"] == "YES"


@pytest.mark.parametrize("hang", [False, True], ids=["scorer-raises", "scorer-overruns-deadline"])
def test_milter_tempfails_when_scoring_fails(hang):
    config = Config()
    config.milter.scoring_deadline = 0.5

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        first = await c.message(HAM)
        second = await c.message(HAM)  # the connection is still usable
        return first, second

    first, second = run_with(BrokenService(config, hang), test)
    for replies in (first, second):
        assert replies[-1][0] == b"y" and replies[-1][1].startswith(b"451 4.7.1 ")


def test_milter_accepts_marked_unknown_when_scoring_fails_and_configured_to():
    config = Config()
    config.milter.on_error = "accept"

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        return await c.message(b"X-Spam-Flag: NO\r\n" + HAM)

    replies = run_with(BrokenService(config), test)
    assert replies[-1][0] == b"a"
    assert headers_added(replies)["X-Spam-Status"].startswith("Unknown")
    assert headers_deleted(replies) == [("X-Spam-Flag", 1)]


@pytest.mark.parametrize("on_oversize", ["accept", "tempfail"])
def test_milter_does_not_keep_messages_above_max_message_size(scoring_service, on_oversize, caplog):
    config = Config()
    config.milter.max_message_size = 100_000
    config.milter.on_oversize = on_oversize
    service = RecordingService(scoring_service(config))
    big = HAM + b"y" * 300_000 + b"\r\n"

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        over = await c.message(b"X-Spam-Flag: NO\r\n" + big)
        under = await c.message(HAM)
        return over, under

    with caplog.at_level(logging.INFO, logger="mailsift.milter"):
        over, under = run_with(service, test)
    assert len(service.calls) == 1 and service.calls[0][0].endswith(
        b"See you at noon.\r\n"
    )  # only the small one
    if on_oversize == "accept":
        assert over[-1][0] == b"a"
        assert headers_added(over)["X-Spam-Status"].startswith("Unknown, not scanned")
        assert headers_deleted(over) == [("X-Spam-Flag", 1)]
        assert "oversize, not scanned" in caplog.text
    else:
        assert over[-1][0] == b"y" and over[-1][1].startswith(b"451 4.3.4 ")
    assert under[-1][0] == b"a" and headers_added(under)["X-Spam-Status"].startswith("No, ")


def test_milter_forgets_an_aborted_message(scoring_service):
    service = RecordingService(scoring_service())

    async def test(port):
        c = await MilterClient.open(port)
        await c.session()
        await c.ask(b"M", b"<first@outside.example>\0")
        await c.ask(b"L", b"X-Spam-Flag\0NO\0")
        await c.ask(b"L", b"Subject\0aborted one\0")
        await c.send(b"A")  # the client said RSET
        replies = await c.message(HAM, mail_from="<second@outside.example>")
        return replies

    replies = run_with(service, test)
    ((raw, context, _),) = service.calls
    assert b"aborted one" not in raw and context.mail_from == "second@outside.example"
    assert headers_deleted(replies) == []


def test_milter_serves_a_new_session_after_quit_nc(scoring_service):
    service = RecordingService(scoring_service())

    async def test(port):
        c = await MilterClient.open(port)
        await c.session(client_ip="192.0.2.1", helo="one.example")
        await c.message(HAM)
        await c.send(b"K")  # QUIT, new connection follows on this socket
        await c.session(client_ip="192.0.2.2", helo="two.example")
        await c.message(HAM)
        await c.send(b"Q")
        return await c.closed()

    assert run_with(service, test)
    assert [(call[1].client_ip, call[1].helo) for call in service.calls] == [
        ("192.0.2.1", "one.example"), ("192.0.2.2", "two.example"),
    ]  # fmt: skip


ABUSE = {
    "oversized-packet": struct.pack(">I", MAX_PACKET + 1) + b"B" + b"x" * 100,
    "zero-length-packet": struct.pack(">I", 0),
    "unknown-command": packet(b"Z", b"whatever"),
    "truncated-frame": struct.pack(">I", 50) + b"Lname\0",
    "header-without-nul": packet(b"L", b"Subject: no nul"),
    "short-optneg": packet(b"O", b"\0\0\0\6"),
    "connect-without-family": packet(b"C", b"host"),
}


@pytest.mark.parametrize("name", sorted(ABUSE))
def test_milter_closes_an_abusive_connection_and_keeps_serving(scoring_service, name, caplog):
    async def test(port):
        bad = await MilterClient.open(port)
        if name not in ("short-optneg",):
            await bad.negotiate()
        bad.writer.write(ABUSE[name])
        await bad.writer.drain()
        if name == "truncated-frame":
            bad.writer.write_eof()  # the MTA went away inside a packet
        closed = await bad.closed()
        good = await MilterClient.open(port)  # the door still works
        await good.session()
        replies = await good.message(HAM)
        good.close()
        return closed, replies

    with caplog.at_level(logging.INFO, logger="mailsift.milter"):
        closed, replies = run_with(scoring_service(), test)
    assert closed
    assert replies[-1][0] == b"a"
    assert "milter" in caplog.text and ("protocol error" in caplog.text or "truncated" in caplog.text)


def test_milter_refuses_commands_before_negotiation(scoring_service):
    async def test(port):
        c = await MilterClient.open(port)
        await c.send(b"H", b"mx.example\0")
        return await c.closed()

    assert run_with(scoring_service(), test)


def test_milter_survives_random_garbage(scoring_service):
    rng = random.Random(11)

    async def test(port):
        for _ in range(40):  # bounded: 40 connections of random bytes
            c = await MilterClient.open(port)
            if rng.random() < 0.5:
                await c.negotiate()
            c.writer.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
            c.writer.write_eof()
            await c.reader.read()  # the milter answers what it can, then closes
            c.close()
        good = await MilterClient.open(port)
        await good.session()
        return await good.message(HAM)

    assert run_with(scoring_service(), test)[-1][0] == b"a"


def test_milter_config_values_are_checked():
    config = Config()
    config.milter.on_error = "pass"
    with pytest.raises(ConfigError, match="milter.on_error"):
        validate(config)
    config = Config()
    config.serve.milter = "nowhere"
    with pytest.raises(ConfigError, match="serve.milter must be HOST:PORT"):
        validate(config)
    config.serve.milter = "0.0.0.0:11332"
    with pytest.raises(ConfigError, match="serve.milter 0.0.0.0:11332 is not a loopback address"):
        validate(config)
