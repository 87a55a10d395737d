"""Shared fixtures.  The real corpora live in ../shared/datasets/ (read-only);
anything derived goes to pytest's temporary folders."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from mailsift.config import Config
from mailsift.corpus import read_index
from mailsift.proxy import LenientSMTP, ProxyServer
from mailsift.train import PROFILES, collect, fit_model, labelled_stream

ROOT = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("MAILSIFT_DATASETS", ROOT.parent / "shared" / "datasets"))
SA = DATASETS / "spamassassin"
MODERN = DATASETS / "modern"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"corpus not found at {path}: the tests read ../shared/datasets/ (or $MAILSIFT_DATASETS)")
    return path


@pytest.fixture(scope="session")
def sa_dir() -> Path:
    return _need(SA)


@pytest.fixture(scope="session")
def modern_dir() -> Path:
    return _need(MODERN)


@pytest.fixture(scope="session")
def sa_train(sa_dir):
    return read_index(sa_dir / "train.index")


@pytest.fixture(scope="session")
def sa_test(sa_dir):
    return read_index(sa_dir / "test.index")


def write_index(path: Path, items) -> Path:
    """An index file with absolute paths (they work from any folder)."""
    path.write_text("".join(f"{'spam' if it.spam else 'ham'} {it.path.resolve()}\n" for it in items))
    return path


@pytest.fixture(scope="session")
def small_indexes(tmp_path_factory, sa_train, sa_test):
    """A small train/test pair cut from the fixed split: 150 ham + 150 spam
    to train on, 100 + 100 to test; enough to train, quick to run."""
    folder = tmp_path_factory.mktemp("small")

    def pick(items, n):
        ham = [i for i in items if not i.spam][:n]
        spam = [i for i in items if i.spam][:n]
        return ham + spam

    train = write_index(folder / "train.index", pick(sa_train, 150))
    test = write_index(folder / "test.index", pick(sa_test, 100))
    return train, test


@pytest.fixture(scope="session")
def split_model(tmp_path_factory, sa_dir):
    """A model trained (full profile) on the whole fixed training split."""
    profile = PROFILES["full"]
    ts = collect(
        labelled_stream(index=read_index(sa_dir / "train.index")), profile.features, show_progress=False
    )
    model, report = fit_model(ts, profile.features, profile.params)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    model.save(path)
    return path, report


@pytest.fixture
def message_bytes():
    """Build a small RFC 822 message."""

    def make(
        body: str = "Hello,\nsee you at the meeting tomorrow.\n",
        subject: str = "meeting",
        headers: str = "",
        from_: str = "Alice <alice@example.org>",
    ) -> bytes:
        head = (
            f"From: {from_}\nTo: bob@example.net\nSubject: {subject}\n"
            "Date: Mon, 01 Jul 2024 10:00:00 +0000\nMessage-ID: <1@example.org>\n"
        )
        return (head + headers + "\n" + body).encode("utf-8")

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyThread:
    """A ProxyServer on its own event loop in a thread, like a daemon."""

    def __init__(self, config: Config, workers: int = -1):
        self.loop = asyncio.new_event_loop()
        self.server = ProxyServer(config, workers=workers)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


#: a small plain message for SMTP tests
HAM = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: lunch\r\n"
    b"Date: Mon, 01 Jul 2024 10:00:00 +0000\r\nMessage-ID: <lunch-1@example.org>\r\n\r\nSee you at noon.\r\n"
)


@dataclass
class Sink:
    """Next hop: records what it accepts; misbehaves on request."""

    received: list = field(default_factory=list)
    refuse_rcpt: set = field(default_factory=set)
    data_reply: str | None = None
    data_delay: float = 0.0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_rcpt:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_reply:
            return self.data_reply
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 queued as TEST"


class SinkController(Controller):
    def factory(self):
        return LenientSMTP(self.handler, **self.SMTP_kwargs)


class DsnSink(Sink):
    """A next hop that offers DSN (RFC 3461) and records the DSN parameters
    of each MAIL and RCPT exactly as they arrived."""

    def __init__(self):
        super().__init__()
        self.dsn: list = []  # (mail params, [rcpt params, ...]) per message

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-DSN", responses[-1]]

    async def handle_DATA(self, server, session, envelope):
        self.dsn.append((session.dsn_mail, list(session.dsn_rcpt)))
        return await super().handle_DATA(server, session, envelope)


class _DsnSinkSMTP(LenientSMTP):
    """aiosmtpd refuses every RCPT parameter: take the DSN ones off first."""

    DSN = ("RET=", "ENVID=", "NOTIFY=", "ORCPT=")

    def _split(self, arg):
        words = arg.split(" ")
        dsn = [w for w in words[1:] if w.upper().startswith(self.DSN)]
        return " ".join(w for w in words if w not in dsn), dsn

    async def smtp_MAIL(self, arg):
        arg, self.session.dsn_mail = self._split(arg or "")
        self.session.dsn_rcpt = []
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg):
        arg, dsn = self._split(arg or "")
        self.session.dsn_rcpt.append(dsn)
        await super().smtp_RCPT(arg)


class DsnSinkController(Controller):
    def factory(self):
        return _DsnSinkSMTP(self.handler, **self.SMTP_kwargs)


def _start_sink(handler, controller_class):
    controller = controller_class(handler, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=True)
    controller.start()
    handler.port = controller.port
    handler.controller = controller
    return handler


@pytest.fixture
def dsn_sink():
    handler = _start_sink(DsnSink(), DsnSinkController)
    yield handler
    handler.controller.stop()


@pytest.fixture
def sink():
    handler = _start_sink(Sink(), SinkController)
    controller = handler.controller
    yield handler
    if controller._thread is not None:  # a test may have stopped it already
        controller.stop()


@pytest.fixture
def make_proxy(sink):
    """``make(**[proxy] settings)`` starts a ProxyThread relaying to ``sink``
    (stopped at the end of the test)."""
    started = []

    def make(**proxy_settings) -> ProxyThread:
        config = Config()
        settings = {"listen": "127.0.0.1:0", "relay": f"127.0.0.1:{sink.port}", "relay_timeout": 2.0}
        config.proxy = replace(config.proxy, **{**settings, **proxy_settings})
        p = ProxyThread(config)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, small_indexes):
    """A model (full profile) trained on the 300 messages of ``small_indexes``:
    quick to train, for tests that change a model (copy it first)."""
    profile = PROFILES["full"]
    ts = collect(labelled_stream(index=read_index(small_indexes[0])), profile.features, show_progress=False)
    model, _ = fit_model(ts, profile.features, profile.params)
    path = tmp_path_factory.mktemp("small-model") / "model.npz"
    model.save(path)
    return path


# -- Redis ---------------------------------------------------------------------
def cluster_port() -> int:
    """A free loopback port for a Redis Cluster node: at most 55535, and the
    port 10000 above it (the cluster bus) free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisProc:
    """A real redis-server on a free loopback port, in its own folder, with
    no persistence of its own (``--save '' --appendonly no``); ``stop(save=
    True)`` writes a dump first so that a restart comes back with its data,
    as a production Redis with persistence would."""

    def __init__(self, folder: Path, cluster: bool = False):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = cluster_port() if cluster else free_port()
        self.cluster = cluster
        self.proc = None
        self.start()

    def start(self) -> None:
        import subprocess
        import time

        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "redis.log"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", "1000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.cli("PING").strip() != "PONG":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        import subprocess

        r = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return r.stdout

    def stop(self, save: bool = False) -> None:
        """Stop the server (its port refuses connections afterwards)."""
        if self.proc is None:
            return
        if save:
            self.cli("SHUTDOWN", "SAVE")
        else:
            self.proc.terminate()
        self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a
        hung or overloaded Redis: the client's timeout is what saves us)."""
        import signal

        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            self.resume()
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    server = RedisProc(tmp_path / "redis")
    server.url = f"redis://127.0.0.1:{server.port}/0"
    yield server
    server.close()


class RedisCluster:
    """Three real redis-server masters on loopback, joined with
    ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, folder: Path):
        import subprocess

        self.nodes: list[RedisProc] = []
        try:
            for i in range(3):  # one by one: a node that fails to start leaves the others closed
                self.nodes.append(RedisProc(folder / f"node{i}", cluster=True))
            hosts = [f"127.0.0.1:{n.port}" for n in self.nodes]
            r = subprocess.run(
                ["redis-cli", "--cluster", "create", *hosts, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if r.returncode:
                raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout}{r.stderr}")
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        self.url = "redis+cluster://" + ",".join(hosts)

    def wait_ok(self, timeout: float = 30) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes if n.proc):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def node_of(self, key: str) -> RedisProc:
        """The master holding ``key``'s hash slot."""
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key))
        for node in self.nodes:
            for line in node.cli("CLUSTER", "NODES").splitlines():
                parts = line.split()
                if "myself" in parts[2]:
                    for rng in parts[8:]:
                        lo, _, hi = rng.partition("-")
                        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                            return node
        raise RuntimeError(f"no node serves slot {slot}")

    def close(self) -> None:
        for n in self.nodes:
            n.close()


@pytest.fixture
def redis_cluster(tmp_path):
    cluster = RedisCluster(tmp_path / "cluster")
    yield cluster
    cluster.close()


# -- mailsift serve's doors (tests/test_service.py, test_spamd.py, test_http.py) -------------
TREC_UNPACK = DATASETS / "trec07p-dev" / "unpack.sh"


@pytest.fixture(scope="session")
def trec_dir() -> Path:
    """trec07p-dev unpacked by its own script into the cache folder (reused
    when already complete; $MAILSIFT_CACHE moves it)."""
    import subprocess

    _need(TREC_UNPACK)
    out = subprocess.run(["bash", str(TREC_UNPACK)], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def trec_model(tmp_path_factory, trec_dir) -> Path:
    """A model trained on the whole train half (18,855 messages; the bar of
    issue #11 scores the test half with it), two-fold calibrated."""
    profile = PROFILES["full"]
    ts = collect(
        labelled_stream(index=read_index(trec_dir / "train.index")), profile.features, show_progress=False
    )
    model, _ = fit_model(ts, profile.features, profile.params, folds=2)
    path = tmp_path_factory.mktemp("trec-model") / "model.npz"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def trec_test_sample(trec_dir):
    """The first 10 spam and the first 10 ham of the test half: (spam, ham) paths."""
    items = read_index(trec_dir / "test.index")
    return [i.path for i in items if i.spam][:10], [i.path for i in items if not i.spam][:10]


class Serving:
    """``mailsift serve`` as a separate process with the doors asked for;
    every door on its own free loopback port."""

    def __init__(self, tmp_path: Path, model: Path, doors: tuple[str, ...], config: str = "", extra=()):
        import subprocess
        import sys
        import time

        self.ports = {d: free_port() for d in doors}
        flag = {"smtp": "--listen", "milter": "--milter", "spamd": "--spamd", "http": "--http"}
        args = [a for d in doors for a in (flag[d], f"127.0.0.1:{self.ports[d]}")]
        cfg = tmp_path / "serve.toml"
        cfg.write_text(config)
        self.config = cfg
        self.log = tmp_path / "serve.log"
        self.env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "XDG_DATA_HOME": str(tmp_path / "d"),
        }
        self.env.pop("MAILSIFT_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailsift.cli", "--config", str(cfg), "serve", *args, "--workers", "1",
             "--model", str(model), *extra],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=self.env,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        # each door logs one "listening on" line once its port is open
        while self.log_text().count("listening on") < max(len(doors), 1):
            assert self.proc.poll() is None, self.log_text()
            assert time.monotonic() < deadline, self.log_text()
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['http']}{path}"

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def serving(tmp_path):
    """Start ``mailsift serve`` processes: serving(model, ("spamd", "http"), config_toml)."""
    started = []

    def start(model: Path, doors: tuple[str, ...], config: str = "", extra=()) -> Serving:
        folder = tmp_path / f"serve{len(started)}" if started else tmp_path  # one folder each
        folder.mkdir(exist_ok=True)
        s = Serving(folder, model, doors, config, extra)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def scoring_service():
    """make(config=None, model_path=None) -> the real mailsift.serve Service
    (scoring in a thread: workers=-1), closed afterwards."""
    from mailsift.serve import Service

    made: list = []

    def make(config: Config | None = None, model_path: str | None = None):
        service = Service(config or Config(), model_path, workers=-1)
        made.append(service)
        return service

    yield make
    for service in made:
        asyncio.run(service.close())
