"""What every peer script shares: the corpus halves, installing Debian
packages, free loopback ports, and writing a run folder that
``mailsift eval --compare`` reads (mailsift.runs)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mailsift.corpus import Labelled, read_index
from mailsift.runs import Run, write_run
from mailsift.train import progress as _progress


def progress(items, total: int, desc: str):
    """A progress bar on a terminal (mailsift's), nothing in logs."""
    return _progress(items, total, desc)


@dataclass
class Corpus:
    train: list[Labelled]
    test: list[Labelled]

    @property
    def train_ham(self) -> list[str]:
        return [str(it.path) for it in self.train if not it.spam]

    @property
    def train_spam(self) -> list[str]:
        return [str(it.path) for it in self.train if it.spam]

    @property
    def test_paths(self) -> list[str]:
        return [str(it.path) for it in self.test]


def load_corpus(train_index: str, test_index: str) -> Corpus:
    return Corpus(read_index(train_index), read_index(test_index))


def missing_packages(needs: dict[str, str]) -> list[str]:
    """Debian packages (values) whose program (keys) is not on PATH."""
    return sorted({pkg for prog, pkg in needs.items() if shutil.which(prog) is None})


def apt_install(packages: list[str]) -> None:
    """Install from Debian's archive, non-interactively.  Only as root: the
    scripts never ask for a password half-way through a benchmark."""
    if not packages:
        return
    if os.geteuid() != 0:
        sys.exit(
            f"missing Debian packages: {' '.join(packages)}; "
            f"run as root or: apt-get install {' '.join(packages)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(packages)} (apt-get)", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Until something accepts on 127.0.0.1:port; fails early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def package_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return f"{package} {out.stdout.strip()}" if out.returncode == 0 else package


def save(
    out: Path,
    name: str,
    scored: list[Labelled],
    scores: list[float],
    *,
    threshold: float,
    score_seconds: float,
    version: str,
    notes: str,
    train_seconds: float | None = None,
    n_train: int | None = None,
    online: bool = False,
) -> Run:
    """One run folder.  Online runs (score each message, then learn it)
    have no training phase: their msgs/s is scoring and learning together."""
    if len(scores) != len(scored):
        raise RuntimeError(f"{name}: {len(scores)} scores for {len(scored)} messages")
    run = Run(
        name=name,
        labels=np.array([it.spam for it in scored], dtype=bool),
        scores=np.array(scores, dtype=np.float64),
        paths=[str(it.path) for it in scored],
        threshold=threshold,
        score_seconds=score_seconds,
        train_seconds=train_seconds,
        n_train=n_train,
        online=online,
        version=version,
        notes=notes,
    )
    write_run(run, out)
    return run
