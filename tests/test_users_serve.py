"""Issue #12's bar on real servers: ``mailsift serve`` node processes (each
its own port and folders) sharing one real redis-server, or a real 3-master
Redis Cluster on loopback, and Debian's ``spamc -u``."""

from __future__ import annotations

import email
import json
import re
import shutil
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from conftest import SA, RedisCluster, RedisProc

from mailsift.corpus import read_index


@pytest.fixture(scope="module")
def ham():
    """A ham of the SA test half: learned as spam for alice it must move her
    score a long way (the site model calls it ham)."""
    return next(i.path.read_bytes() for i in read_index(SA / "test.index") if not i.spam)


@dataclass
class Shared:
    url: str
    servers: list  # RedisProc
    cluster: RedisCluster | None = None

    def stop(self) -> None:
        for server in self.servers:
            server.stop(save=True)  # a production Redis persists; the restart comes back with the data

    def restart(self) -> None:
        for server in self.servers:
            server.start()
        if self.cluster is not None:
            self.cluster.wait_ok()


@pytest.fixture(params=["redis", "cluster"])
def shared(request, tmp_path):
    if request.param == "redis":
        server = RedisProc(tmp_path / "redis")
        yield Shared(f"redis://127.0.0.1:{server.port}/0", [server])
        server.close()
    else:
        cluster = RedisCluster(tmp_path / "cluster")
        yield Shared(cluster.url, cluster.nodes, cluster)
        cluster.close()


def _store(url: str) -> str:
    """Each node keeps its outage queue in its own $XDG_DATA_HOME (the default)."""
    return f'[store]\nurl = "{url}"\nretry_every = 0.2\n'


def _post(url: str, body: bytes, timeout: float = 10.0) -> dict:
    req = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        doc = json.loads(r.read())
        # 202 exactly when the learn is queued (?wait=0, or the shared store down)
        assert r.status == (202 if doc.get("outcome") == "queued" else 200)
        return doc


def _metric(node, name: str) -> float:
    with urllib.request.urlopen(node.url("/metrics"), timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _until(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_two_serve_nodes_share_alices_learn_not_bobs_and_answer_with_redis_stopped(
    shared, serving, small_model, tmp_path, ham
):
    config = _store(shared.url)
    a = serving(small_model, ("http",), config)
    b = serving(small_model, ("http",), config)
    site = _post(b.url("/score"), ham)
    bob_before = _post(b.url("/score?user=bob"), ham)
    alice_before = _post(b.url("/score?user=alice"), ham)
    assert alice_before["log_odds"] == site["log_odds"] and alice_before["user"] == "alice"

    learned = _post(a.url("/learn?class=spam&user=alice"), ham)
    assert learned == {"outcome": "learned", "class": "spam", "user": "alice"}
    seen_at = time.monotonic()
    took = _until(lambda: _post(b.url("/score?user=alice"), ham)["log_odds"] > site["log_odds"] + 1.0, 5.0)
    alice = _post(b.url("/score?user=alice"), ham)
    assert alice["score"] > alice_before["score"] and alice["user_spam"] == 1
    print(f"learn on A seen on B after {took:.3f} s (score {alice_before['score']} -> {alice['score']})")
    assert time.monotonic() - seen_at < 5.0

    again = _post(b.url("/learn?class=spam&user=alice"), ham)
    assert again["outcome"] == "already-learned"
    bob = _post(b.url("/score?user=bob"), ham)
    assert bob["log_odds"] == bob_before["log_odds"] and bob["score"] == bob_before["score"]
    assert _post(a.url("/score"), ham)["log_odds"] == site["log_odds"]  # the site model did not move

    shared.stop()
    for node in (a, b):
        start = time.monotonic()
        during = _post(node.url("/score?user=alice"), ham, timeout=2.0)
        took = time.monotonic() - start
        print(f"/score with Redis stopped: {took:.3f} s, stale={during['user_stale']}")
        assert took < 2.0
        assert during["is_spam"] == alice["is_spam"]
    # a learn meanwhile is queued, and /metrics says the store is down
    assert _post(a.url("/learn?class=spam&user=carol"), ham)["outcome"] == "queued"
    assert _metric(a, "mailsift_store_outage") == 1.0
    assert _metric(a, "mailsift_store_queued") == 1.0
    assert _metric(a, 'mailsift_learn_total{class="spam",outcome="queued"}') == 1.0

    shared.restart()  # no traffic: the service's watch loop replays the queue
    _until(lambda: _metric(a, "mailsift_store_queued") == 0.0, 15.0)
    assert _metric(a, "mailsift_store_replayed_total") == 1.0
    assert _metric(a, "mailsift_store_outage") == 0.0
    carol = _post(b.url("/score?user=carol"), ham)
    assert carol["user_spam"] == 1 and carol["log_odds"] > site["log_odds"] + 1.0


@pytest.fixture(scope="module")
def hams():
    """Two hams of the SA test half (the site model calls them ham)."""
    return [i.path.read_bytes() for i in read_index(SA / "test.index") if not i.spam][:2]


def test_a_site_learn_on_one_node_is_seen_by_every_node_and_user_and_queued_while_redis_is_down(
    shared, serving, small_model, hams
):
    ham, other = hams
    config = _store(shared.url)
    a = serving(small_model, ("http",), config)
    b = serving(small_model, ("http",), config)
    model_bytes = small_model.read_bytes()
    before = _post(b.url("/score"), ham)
    assert before["site_learned"] and before["site_log_odds"] == 0.0 and before["site_spam"] == 0

    learned = _post(a.url("/learn?class=spam"), ham)  # no user: the site's learn
    assert learned == {"outcome": "learned", "class": "spam"}
    took = _until(lambda: _post(b.url("/score"), ham)["log_odds"] > before["log_odds"] + 1.0, 5.0)
    site = _post(b.url("/score"), ham)
    print(f"site learn on A seen on B after {took:.3f} s (score {before['score']} -> {site['score']})")
    assert site["site_spam"] == 1 and site["score"] > before["score"]
    assert site["log_odds"] == pytest.approx(before["log_odds"] + site["site_log_odds"], abs=1e-9)
    assert _post(a.url("/score"), ham)["log_odds"] == site["log_odds"]  # A reads the same store
    assert _post(b.url("/learn?class=spam"), ham)["outcome"] == "already-learned"
    assert small_model.read_bytes() == model_bytes  # the model file is not what learned

    # every user starts from the site as it is now: the site model plus the site's learns
    bob = _post(b.url("/score?user=bob"), ham)
    assert bob["log_odds"] == site["log_odds"] and bob["user_log_odds"] == 0.0
    assert _post(a.url("/learn?class=ham&user=alice"), ham)["outcome"] == "learned"
    alice = _post(b.url("/score?user=alice"), ham)
    assert alice["user_log_odds"] < 0 and alice["site_log_odds"] == site["site_log_odds"]
    assert alice["log_odds"] == pytest.approx(
        before["log_odds"] + site["site_log_odds"] + alice["user_log_odds"]
    )
    assert _post(b.url("/score?user=bob"), ham)["log_odds"] == site["log_odds"]  # alice's click is hers

    shared.stop()
    for node in (a, b):
        start = time.monotonic()
        during = _post(node.url("/score"), ham, timeout=2.0)
        took = time.monotonic() - start
        print(f"site /score with Redis stopped: {took:.3f} s, site_stale={during['site_stale']}")
        assert took < 2.0 and during["site_stale"]
        assert during["log_odds"] == site["log_odds"]  # the last known site learns, not the file alone
    # only B's scoring workers met the outage (no learn on B): /metrics says so all the same
    assert _metric(b, "mailsift_store_outage") == 1.0
    assert _metric(b, "mailsift_store_errors_total") >= 1.0
    assert _metric(b, "mailsift_store_stale_reads_total") >= 1.0
    other_before = _post(b.url("/score"), other, timeout=2.0)
    assert _post(a.url("/learn?class=spam"), other)["outcome"] == "queued"
    assert _metric(a, "mailsift_store_queued") == 1.0

    shared.restart()  # no traffic on A: its watch loop replays the queue
    _until(lambda: _metric(a, "mailsift_store_queued") == 0.0, 15.0)
    assert _metric(a, "mailsift_store_replayed_total") == 1.0
    # B's workers last found Redis down; B's watch loop asks it again, no mail needed
    _until(lambda: _metric(b, "mailsift_store_outage") == 0.0, 10.0)
    replayed = _post(b.url("/score"), other)
    assert replayed["site_spam"] == 2 and replayed["log_odds"] > other_before["log_odds"] + 1.0
    assert not replayed["site_stale"] and _metric(b, "mailsift_store_outage") == 0.0
    assert _post(b.url("/learn?class=spam"), other)["outcome"] == "already-learned"
    for message in (ham, other):  # taken back on either node: the site model file alone again
        assert _post(b.url("/unlearn?class=spam"), message) == {"outcome": "unlearned", "class": "spam"}
    back = _post(a.url("/score"), ham)
    assert back["site_spam"] == 0 and back["log_odds"] == pytest.approx(before["log_odds"], abs=1e-9)


def test_http_user_names_are_any_mailbox_name_and_an_unusable_one_scores_with_the_site_model(
    serving, small_model, tmp_path, ham
):
    node = serving(small_model, ("http",), f'[store]\npath = "{tmp_path}/users"\n')
    site = _post(node.url("/score"), ham)
    for quoted, name, others in [
        ("o%27brien", "o'brien", ("obrien", "o%2527brien")),
        ("%E2%84%AAate", "\u212aate", ("kate", "%25e2%2584%25aaate")),  # the Kelvin sign is not k
        ("DOMAIN%5Calice", "domain\\alice", ("alice", "domain%255calice")),
    ]:
        assert _post(node.url(f"/learn?class=spam&user={quoted}"), ham) == {
            "outcome": "learned",
            "class": "spam",
            "user": name,
        }
        assert _post(node.url(f"/score?user={quoted}"), ham)["user_spam"] == 1
        for other in others:
            assert _post(node.url(f"/score?user={other}"), ham)["log_odds"] == site["log_odds"], other
    for bad in ("a%00b", "", "a%0Ab", "a%FFb", "a%FEb"):  # %FF: not UTF-8, never U+FFFD for all
        doc = _post(node.url(f"/score?user={bad}"), ham)  # scored, never refused: the site model
        assert doc["log_odds"] == site["log_odds"] and doc["user"] == "" and "user_refused" in doc
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(node.url(f"/learn?class=spam&user={bad}"), ham)
        assert err.value.code == 400 and "user name" in json.loads(err.value.read())["error"]
    assert "cannot name a user" in node.log_text()


@pytest.mark.skipif(shutil.which("spamc") is None, reason="spamc not installed (.ci/run installs it)")
def test_spamc_u_takes_any_mailbox_name_on_redis_and_an_unusable_one_is_scored_not_passed_through(
    redis_server, serving, small_model, tmp_path, ham
):
    import redis

    node = serving(small_model, ("spamd", "http"), _store(redis_server.url))
    site = _post(node.url("/score"), ham)

    def spamc(*args: str) -> subprocess.CompletedProcess:
        cmd = ["/usr/bin/spamc", "-d", "127.0.0.1", "-p", str(node.ports["spamd"]), "-t", "30", *args]
        return subprocess.run(cmd, input=ham, capture_output=True, timeout=60)

    def checked(user: str) -> float:
        out = spamc("-u", user, "-c")
        assert out.returncode in (0, 1), out  # 0/1 ham/spam: scored; anything else: passed unscanned
        return float(out.stdout.decode().split("/")[0])

    for name, others in [
        ("o'brien", ("obrien", "o%27brien")),
        ("jörg", ("jorg", "j%c3%b6rg")),
        ("\u212aate", ("kate", "Kate")),
        ("first/last", ("last", "first%2flast")),
        ("a&b", ("a", "b")),
        ("voilà", ("voila", "voil")),  # UTF-8 "à" ends in \xa0, a blank to str.strip()
    ]:
        out = spamc("-u", name, "-L", "spam")
        assert out.stdout.decode().strip() == "Message successfully un/learned", (name, out)
        assert checked(name) > site["score"] + 0.5, name
        for other in others:
            assert abs(checked(other) - site["score"]) < 0.051, (name, other)
    keys = {k.decode() for k in redis.Redis.from_url(redis_server.url).keys("*")}
    assert any("{o%27brien}" in k for k in keys) and any("{%e2%84%aaate}" in k for k in keys), keys
    assert not any("{obrien}" in k or "{kate}" in k for k in keys)  # scored, never written

    # a name that cannot be a name: scored with the site model and logged, not EX_NOUSER (unscanned)
    for bad in ("a\x01b", "x" * 300):
        assert abs(checked(bad) - site["score"]) < 0.051
        whole = spamc("-u", bad)  # plain spamc: the message comes back with our verdict in it
        assert whole.returncode == 0 and b"X-Spam-Status: " in whole.stdout
        learn = spamc("-u", bad, "-L", "spam")
        assert "successfully" not in learn.stdout.decode()  # refused: the site model is not taught instead
    assert _post(node.url("/score"), ham)["log_odds"] == site["log_odds"]
    log_text = node.log_text()
    assert re.search(r"spamd: User 'a\\x01b' cannot name a user \(.*control character.*site model", log_text)
    assert re.search(r"spamd: User 'x+' cannot name a user \(.*at most 254.*site model", log_text)
    # the unprintable name is logged escaped, never raw
    assert re.search(r"method=TELL user='a\\x01b' .*EX_NOUSER", log_text), log_text[-3000:]
    assert "\x01" not in log_text


@pytest.mark.skipif(shutil.which("spamc") is None, reason="spamc not installed (.ci/run installs it)")
def test_spamc_u_alice_learns_for_alice_only(redis_server, serving, small_model, tmp_path, ham):
    node = serving(small_model, ("spamd", "http"), _store(redis_server.url))
    site = _post(node.url("/score"), ham)
    bob_before = _post(node.url("/score?user=bob"), ham)

    def spamc(*args: str) -> subprocess.CompletedProcess:
        cmd = ["/usr/bin/spamc", "-d", "127.0.0.1", "-p", str(node.ports["spamd"]), "-t", "30", *args]
        return subprocess.run(cmd, input=ham, capture_output=True, timeout=60)

    before = float(spamc("-u", "alice", "-c").stdout.decode().split("/")[0])
    assert abs(before - site["score"]) < 0.051  # a new user is the site model
    out = spamc("-u", "alice", "-L", "spam")
    assert out.returncode == 0 and out.stdout.decode().strip() == "Message successfully un/learned"
    alice = _post(node.url("/score?user=alice"), ham)
    assert alice["user_spam"] == 1 and alice["log_odds"] > site["log_odds"] + 1.0
    assert float(spamc("-u", "alice", "-c").stdout.decode().split("/")[0]) > before
    bob = _post(node.url("/score?user=bob"), ham)
    assert bob["log_odds"] == bob_before["log_odds"] and bob["score"] == bob_before["score"]
    assert _post(node.url("/score"), ham)["log_odds"] == site["log_odds"]
    again = spamc("-u", "alice", "-L", "spam")
    assert again.stdout.decode().strip() == "Message was already un/learned"
    told = r"method=TELL user=alice size=\d+ class=spam op=set outcome=already-learned"
    assert re.search(told, node.log_text())
    undo = _post(node.url("/unlearn?class=spam&user=alice"), ham)
    assert undo == {"outcome": "unlearned", "class": "spam", "user": "alice"}
    assert _post(node.url("/score?user=alice"), ham)["log_odds"] == site["log_odds"]  # exact

    # Redis down: the click is queued, and spamc says it was learned (it will be), not "already"
    redis_server.stop()
    queued = spamc("-u", "carol", "-L", "spam")
    assert queued.returncode == 0 and queued.stdout.decode().strip() == "Message successfully un/learned"
    assert re.search(r"method=TELL user=carol .*outcome=queued", node.log_text())
    assert _metric(node, "mailsift_store_queued") == 1.0
    redis_server.start()
    _until(lambda: _metric(node, "mailsift_store_queued") == 0.0, 15.0)
    assert _post(node.url("/score?user=carol"), ham)["user_spam"] == 1


def _smtp_node_with_alices_spam(redis_server, serving, small_model, sink, ham):
    """A serving SMTP + HTTP node on Redis where alice learned ``ham`` as
    spam: (node, alice's address, the site's score, hers)."""
    node = serving(
        small_model, ("smtp", "http"), _store(redis_server.url), extra=("--relay", f"127.0.0.1:{sink.port}")
    )
    alice = "alice@example.net"
    site = _post(node.url("/score"), ham)["score"]
    assert _post(node.url(f"/learn?class=spam&user={alice}"), ham)["outcome"] == "learned"
    hers = _post(node.url(f"/score?user={alice}"), ham)["score"]
    assert hers > site + 1.0
    return node, alice, site, hers


def test_the_smtp_door_scores_with_the_single_recipients_model_else_the_sites(
    redis_server, serving, small_model, sink, ham
):
    node, alice, site, hers = _smtp_node_with_alices_spam(redis_server, serving, small_model, sink, ham)

    def delivered_score(rcpts: list[str]) -> float:
        with smtplib.SMTP("127.0.0.1", node.ports["smtp"], timeout=30) as c:
            c.sendmail("s@example.org", rcpts, ham)
        return float(email.message_from_bytes(sink.received[-1][2])["X-Spam-Score"])

    assert delivered_score([alice]) == pytest.approx(hers, abs=0.051)
    assert delivered_score(["Alice@Example.NET"]) == pytest.approx(hers, abs=0.051)  # one user, any case
    assert delivered_score([alice, "bob@example.net"]) == pytest.approx(site, abs=0.051)  # two: the site's
    assert delivered_score(["bob@example.net"]) == pytest.approx(site, abs=0.051)


def test_the_smtp_door_names_alice_plus_anything_as_alice_so_her_model_and_block_list_apply(
    redis_server, serving, small_model, sink, ham
):
    """[users] recipient_delimiter (default "+"): a sender adding +x to her
    address gets her learned model and her block list, not the site's."""
    node, alice, site, hers = _smtp_node_with_alices_spam(redis_server, serving, small_model, sink, ham)
    block = [sys.executable, "-m", "mailsift.cli", "--config", str(node.config), "lists", "--user", alice]
    out = subprocess.run(
        [*block, "--block", "spammer@junk.example"], env=node.env, capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr

    def delivered(rcpts: list[str], sender: str = "s@example.org") -> email.message.Message:
        with smtplib.SMTP("127.0.0.1", node.ports["smtp"], timeout=30) as c:
            c.sendmail(sender, rcpts, ham)
        return email.message_from_bytes(sink.received[-1][2])

    assert float(delivered(["alice+shop@example.net"])["X-Spam-Score"]) == pytest.approx(hers, abs=0.051)
    assert float(delivered(["<Alice+Shop@Example.NET>"])["X-Spam-Score"]) == pytest.approx(hers, abs=0.051)
    two_tags = delivered(["alice+a@example.net", "alice+b@example.net"])  # one user: hers
    assert float(two_tags["X-Spam-Score"]) == pytest.approx(hers, abs=0.051)
    assert "USER_BLOCK_LISTED" in delivered(["alice+x@example.net"], "spammer@junk.example")["X-Spam-Status"]
    assert (
        "USER_BLOCK_LISTED" not in delivered(["bob+x@example.net"], "spammer@junk.example")["X-Spam-Status"]
    )
    assert float(delivered(["bob+x@example.net"])["X-Spam-Score"]) == pytest.approx(site, abs=0.051)


def test_smtp_recipients_named_by_local_part_for_local_domains_and_as_given_with_no_delimiter(
    redis_server, serving, small_model, sink, ham
):
    """[users] local_domains: alice@example.net is "alice", the name spamc -u
    and Dovecot give her; recipient_delimiter = "" keeps alice+shop its own."""
    users = '[users]\nrecipient_delimiter = ""\nlocal_domains = ["Example.NET"]\n'
    node = serving(
        small_model,
        ("smtp", "http"),
        _store(redis_server.url) + 'prefix = "localpart"\n' + users,
        extra=("--relay", f"127.0.0.1:{sink.port}"),
    )
    site = _post(node.url("/score"), ham)["score"]
    # learned under the full address: not hers when local_domains names her "alice"
    assert _post(node.url("/learn?class=spam&user=alice@example.net"), ham)["outcome"] == "learned"

    def delivered_score(rcpts: list[str]) -> float:
        with smtplib.SMTP("127.0.0.1", node.ports["smtp"], timeout=30) as c:
            c.sendmail("s@example.org", rcpts, ham)
        return float(email.message_from_bytes(sink.received[-1][2])["X-Spam-Score"])

    assert delivered_score(["alice@example.net"]) == pytest.approx(site, abs=0.051)
    assert _post(node.url("/learn?class=spam&user=alice"), ham)["outcome"] == "learned"
    hers = _post(node.url("/score?user=alice"), ham)["score"]
    assert hers > site + 1.0
    assert delivered_score(["Alice@example.net"]) == pytest.approx(hers, abs=0.051)
    assert delivered_score(["alice+shop@example.net"]) == pytest.approx(site, abs=0.051)  # delimiter off
    other = _post(node.url("/score?user=alice@other.example"), ham)["score"]
    assert delivered_score(["alice@other.example"]) == pytest.approx(other, abs=0.051)  # not local: as given
    assert other == pytest.approx(site, abs=0.051)


@pytest.fixture(scope="module")
def six_messages():
    """Six messages of the SA test half, spam and ham."""
    items = read_index(SA / "test.index")
    return [
        i.path.read_bytes()
        for i in [*[i for i in items if i.spam][:3], *[i for i in items if not i.spam][:3]]
    ]


def _migrating(cluster, tag: str):
    """Begin moving the hash slot of ``tag`` (a mailsift hash tag: the site's
    ``%site`` or a user's name) to another master, as ``redis-cli --cluster
    reshard`` does: IMPORTING on the target, MIGRATING on the source.
    Returns (slot, source, target, the slot's keys)."""
    slot = int(cluster.nodes[0].cli("CLUSTER", "KEYSLOT", tag))
    src = cluster.node_of(tag)
    dst = next(n for n in cluster.nodes if n is not src)
    src_id, dst_id = src.cli("CLUSTER", "MYID").strip(), dst.cli("CLUSTER", "MYID").strip()
    keys = src.cli("CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
    assert keys, f"no mailsift keys in slot {slot} yet"
    assert dst.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id).strip() == "OK"
    assert src.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id).strip() == "OK"
    return slot, src, dst, keys


def _migrate(src, dst, keys: list[str]) -> None:
    out = src.cli("MIGRATE", "127.0.0.1", str(dst.port), "", "0", "5000", "KEYS", *keys)
    assert out.strip() == "OK", out


def _redirects(cluster) -> dict[str, int]:
    """ASK and MOVED error replies the masters sent (INFO errorstats)."""
    counts = {"ASK": 0, "MOVED": 0}
    for node in cluster.nodes:
        for kind in counts:
            m = re.search(rf"errorstat_{kind}:count=(\d+)", node.cli("INFO", "errorstats"))
            counts[kind] += int(m.group(1)) if m else 0
    return counts


def test_scoring_and_learning_follow_a_cluster_slot_migration_with_nothing_lost(
    redis_cluster, serving, small_model, six_messages
):
    """The site's and alice's slots move to other masters while the node
    scores and learns: the keys of one user (or of the site) share a hash tag,
    so the learn script's three keys move together; reads follow ASK (the
    slot half moved) and MOVED (after SETSLOT NODE); a learn that meets
    TRYAGAIN (its keys split between two masters for a moment) is queued and
    replayed, never lost."""
    node = serving(small_model, ("http",), _store(redis_cluster.url))
    m = six_messages
    base = {
        who: _post(node.url(f"/score{q}"), m[0])["log_odds"]
        for who, q in (("site", ""), ("alice", "?user=alice"))
    }

    def learn(message: bytes, user: str | None) -> str:
        return _post(node.url("/learn?class=spam" + (f"&user={user}" if user else "")), message)["outcome"]

    def scores() -> tuple[float, float]:
        return _post(node.url("/score"), m[0])["log_odds"], _post(node.url("/score?user=alice"), m[0])[
            "log_odds"
        ]

    assert learn(m[0], None) == "learned" and learn(m[1], "alice") == "learned"  # the keys exist now
    known = scores()
    moving = [_migrating(redis_cluster, tag) for tag in ("%site", "alice")]
    before = _redirects(redis_cluster)

    # 1. the big hash (the sums) moved, the ledger and counts not yet: reads are ASKed to the target
    for _, src, dst, keys in moving:
        _migrate(src, dst, [k for k in keys if ":d:" in k])
    assert scores() == known
    split = known
    outcomes = [learn(m[2], None), learn(m[2], "alice")]
    assert all(o in ("learned", "queued") for o in outcomes), outcomes  # TRYAGAIN: queued, not lost
    print(f"learns while the keys were split: {outcomes}")

    # 2. every key moved, the slot still MIGRATING: all of it is ASKed to the target
    for slot, src, dst, _ in moving:
        _migrate(src, dst, src.cli("CLUSTER", "GETKEYSINSLOT", str(slot), "100").split())
    # the learns queued in 1. land once the store is asked again (retry_every), before the next
    _until(lambda: _metric(node, "mailsift_store_queued") == 0.0, 15.0)
    time.sleep(0.3)  # the TRYAGAIN marked the store down for retry_every (0.2 s): asked again after it
    known = scores()
    assert known[0] > split[0] and known[1] > split[1]  # 1.'s learns are in
    assert learn(m[3], None) == "learned" and learn(m[3], "alice") == "learned"
    known = scores()
    assert _post(node.url("/score"), m[3])["site_spam"] == 3

    # 3. the move is over (SETSLOT NODE on every master): the client is told MOVED
    for slot, _, dst, _ in moving:
        dst_id = dst.cli("CLUSTER", "MYID").strip()
        for n in [dst, *[x for x in redis_cluster.nodes if x is not dst]]:
            assert n.cli("CLUSTER", "SETSLOT", str(slot), "NODE", dst_id).strip() == "OK"
    for slot, src, dst, _ in moving:
        assert src.cli("CLUSTER", "COUNTKEYSINSLOT", str(slot)).strip() == "0"
        assert int(dst.cli("CLUSTER", "COUNTKEYSINSLOT", str(slot))) == 3
    assert scores() == known  # read where the slot is now
    assert learn(m[4], None) == "learned" and learn(m[4], "alice") == "learned"
    after = _redirects(redis_cluster)
    ask, moved = after["ASK"] - before["ASK"], after["MOVED"] - before["MOVED"]
    print(f"redirects during the migration: {ask} ASK, {moved} MOVED")
    assert ask > 0 and moved > 0

    # nothing lost, nothing twice: every learn is in the ledger once, and undoing them all is exact
    _until(lambda: _metric(node, "mailsift_store_queued") == 0.0, 15.0)
    site = _post(node.url("/score"), m[0])
    alice = _post(node.url("/score?user=alice"), m[0])
    assert site["site_spam"] == 4 and alice["user_spam"] == 4
    for message in (m[0], m[2], m[3], m[4]):
        assert learn(message, None) == "already-learned"
    for message in (m[1], m[2], m[3], m[4]):
        assert learn(message, "alice") == "already-learned"
    for message, user in [(x, None) for x in (m[0], m[2], m[3], m[4])] + [
        (x, "alice") for x in (m[1], m[2], m[3], m[4])
    ]:
        q = f"&user={user}" if user else ""
        assert _post(node.url(f"/unlearn?class=spam{q}"), message)["outcome"] == "unlearned"
    assert _post(node.url("/score"), m[0])["log_odds"] == pytest.approx(base["site"], abs=1e-9)
    assert _post(node.url("/score?user=alice"), m[0])["log_odds"] == pytest.approx(base["alice"], abs=1e-9)


@pytest.mark.parametrize("traffic", [False, True], ids=["no-traffic", "scores-during-recovery"])
def test_a_torn_line_in_the_learn_queue_does_not_stop_serve_and_the_good_learn_is_replayed(
    redis_server, serving, small_model, ham, traffic
):
    """Half a line left in the outage queue by a crash mid-append: ``serve``
    goes on answering (it used to exit 70, again at every restart), replays
    the good learn, and sets the torn line aside in ``<queue>.rejected``,
    logged and counted.  With /score traffic while Redis comes back, the
    scoring workers never replay (they would count it where the metrics
    door never sees it): the service does, and counts it."""
    node = serving(small_model, ("http",), _store(redis_server.url))
    site = _post(node.url("/score"), ham)
    redis_server.stop(save=True)
    assert _post(node.url("/learn?class=spam&user=alice"), ham)["outcome"] == "queued"
    queue = node.log.parent / "d" / "mailsift" / "store-queue.jsonl"
    torn = '{"user": "alice", "space": "abc"'
    queue.write_text(torn + "\n" + queue.read_text())
    redis_server.start()  # the watch loop replays

    def replayed() -> bool:
        if traffic:
            _post(node.url("/score?user=alice"), ham)
        return _metric(node, "mailsift_store_queued") == 0.0

    _until(replayed, 15.0)
    assert node.proc.poll() is None
    assert _metric(node, "mailsift_store_rejected_total") == 1.0
    assert _metric(node, "mailsift_store_replayed_total") == 1.0
    rejected = [
        json.loads(line) for line in queue.with_name(queue.name + ".rejected").read_text().splitlines()
    ]
    assert [r["line"] for r in rejected] == [torn]
    assert "a queued learn was rejected" in node.log_text()
    alice = _post(node.url("/score?user=alice"), ham)
    assert alice["user_spam"] == 1 and alice["log_odds"] > site["log_odds"] + 1.0
    assert _post(node.url("/learn?class=spam&user=bob"), ham)["outcome"] == "learned"


def _cli(node, *args: str, config: str = "") -> subprocess.CompletedProcess:
    """``mailsift`` with a config of its own (not the node's: its [store] is
    elsewhere, so a learn that reaches the node's store came through the node)."""
    import sys

    cfg = node.config.parent / "cli.toml"
    cfg.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "mailsift.cli", "--config", str(cfg), *args],
        capture_output=True, text=True, env=node.env, timeout=120,
    )  # fmt: skip


def test_learn_user_goes_through_the_service_and_fails_when_it_is_not_reachable(
    serving, small_model, tmp_path, ham
):
    from conftest import free_port

    node = serving(small_model, ("http",), f'[store]\npath = "{tmp_path}/users"\n')
    message = tmp_path / "ham.eml"
    message.write_bytes(ham)
    own = f'[store]\npath = "{tmp_path}/cli-users"\n'
    service = ("--service", node.url(""))
    done = _cli(node, "learn", "--spam", "--user", "alice", *service, str(message), config=own)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"learned as spam for alice (through the service at {node.url('')})")
    assert _post(node.url("/score?user=alice"), ham)["user_spam"] == 1
    # a configured [serve] http is the service too
    serve = f'[serve]\nhttp = "127.0.0.1:{node.ports["http"]}"\n'
    done = _cli(node, "learn", "--ham", "--user", "bob", "--no-wait", str(message), config=own + serve)
    assert done.returncode == 0, done.stderr
    assert "queued to be learned as ham for bob (through the service" in done.stdout
    _until(lambda: _post(node.url("/score?user=bob"), ham)["user_ham"] == 1, 10)
    assert not (tmp_path / "cli-users").exists()  # nothing learned on the CLI's side
    # named and not reachable: an error, as for the site's learns, and nothing learned here
    gone = f"http://127.0.0.1:{free_port()}"
    for who in (("--user", "carol"), ()):
        done = _cli(node, "learn", "--spam", *who, "--service", gone, str(message), config=own)
        assert done.returncode == 69 and "service not reachable" in done.stderr, (who, done)
        assert "learned" not in done.stdout
    assert not (tmp_path / "cli-users").exists()


def test_http_user_given_twice_is_refused_and_a_plus_in_the_query_is_a_space(
    serving, small_model, tmp_path, ham
):
    node = serving(small_model, ("http",), f'[store]\npath = "{tmp_path}/users"\n')
    site = _post(node.url("/score"), ham)
    for path in ("/learn?class=spam&", "/unlearn?"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(node.url(f"{path}user=alice&user=bob"), ham)
        assert err.value.code == 400 and "2 times" in json.loads(err.value.read())["error"]
    for user in ("alice", "bob"):  # neither learned
        assert _post(node.url(f"/score?user={user}"), ham)["user_spam"] == 0
    doc = _post(node.url("/score?user=alice&user=bob"), ham)
    assert doc["log_odds"] == site["log_odds"] and doc["user"] == "" and "2 times" in doc["user_refused"]
    assert _post(node.url("/learn?class=spam&user=alice%2Btag"), ham)["user"] == "alice+tag"
    assert _post(node.url("/learn?class=spam&user=alice+tag"), ham)["user"] == "alice tag"
