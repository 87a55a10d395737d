"""train's folds and final fit in worker processes (mailsift/fitjobs.py):
the same model as in one process, and a worker killed mid-fit loses nothing."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mailsift import fitjobs
from mailsift.train import PROFILES, collect, fit_model, labelled_stream


@pytest.fixture(scope="module")
def training_set(sa_train):
    """300 ham + 150 spam of the 2002 training split, features of the full profile."""
    ham = [i for i in sa_train if not i.spam][:300]
    spam = [i for i in sa_train if i.spam][:150]
    profile = PROFILES["full"]
    return collect(labelled_stream(index=ham + spam), profile.features, show_progress=False)


def _same(a, b) -> None:
    assert np.array_equal(a.w, b.w)
    assert np.array_equal(a.acc, b.acc)
    assert a.platt == b.platt
    assert (a.n_ham, a.n_spam) == (b.n_ham, b.n_spam)


def _workers() -> set[int]:
    """joblib's loky workers among this process's children (not its resource
    trackers, children too: started first, one of them had the lowest pid,
    and killing it killed no worker when this test ran alone)."""
    me, out = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me and b"LokyProcess" in cmdline:
                out.add(int(entry.name))
    return out


def test_parallel_fit_gives_the_model_of_one_process(training_set, monkeypatch):
    monkeypatch.setattr(fitjobs, "PARALLEL_MIN_MESSAGES", 0)
    profile = PROFILES["full"]
    one, report_one = fit_model(training_set, profile.features, profile.params, jobs=1)
    two, report_two = fit_model(training_set, profile.features, profile.params, jobs=2)
    _same(one, two)
    assert report_one.cv == report_two.cv


def test_small_training_sets_are_fitted_in_this_process(training_set, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("workers started for a small training set")

    monkeypatch.setattr(fitjobs, "_pack", refuse)  # the parallel path packs first
    profile = PROFILES["full"]
    assert len(training_set.y) < fitjobs.PARALLEL_MIN_MESSAGES
    fit_model(training_set, profile.features, profile.params, jobs=4)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_training_survives_a_killed_worker(training_set, monkeypatch, caplog):
    """A worker is SIGKILLed while it fits (as the OOM killer would): the
    fits run again in this process, with a warning, and the model is the one
    a single process gives."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)  # fresh workers, started after the watch begins
    monkeypatch.setattr(fitjobs, "PARALLEL_MIN_MESSAGES", 0)
    profile = PROFILES["full"]
    params = replace(profile.params, epochs=12)  # each fit runs a few seconds: time to kill one
    before = _workers()
    killed: list[int] = []
    done = threading.Event()
    real_pack = fitjobs._pack

    def watch() -> None:
        deadline = time.monotonic() + 60  # bounded: the test fails, not hangs, if no worker shows
        while not done.is_set() and time.monotonic() < deadline:
            new = _workers() - before
            if new:
                time.sleep(1.0)  # let it start on a fit
                pid = min(new)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    def pack_then_watch(X):
        threading.Thread(target=watch, daemon=True).start()
        return real_pack(X)

    monkeypatch.setattr(fitjobs, "_pack", pack_then_watch)
    with caplog.at_level(logging.WARNING, logger="mailsift.fitjobs"):
        try:
            survived, _ = fit_model(training_set, profile.features, params, jobs=2)
        finally:
            done.set()
    assert killed, "no worker process appeared to kill"
    assert "a training worker died" in caplog.text
    alone, _ = fit_model(training_set, profile.features, params, jobs=1)
    _same(survived, alone)


def test_training_survives_workers_that_cannot_start(training_set, monkeypatch, tmp_path, caplog):
    """joblib's memory-map folder cannot be made (JOBLIB_TEMP_FOLDER under a
    file here; a read-only or full /dev/shm or TMPDIR alike): the fits run in
    this process with a warning naming the cause, not a PicklingError traceback
    that lost the training."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(tmp_path / "a-file" / "joblib"))
    monkeypatch.setattr(fitjobs, "PARALLEL_MIN_MESSAGES", 0)
    profile = PROFILES["full"]
    with caplog.at_level(logging.WARNING, logger="mailsift.fitjobs"):
        survived, _ = fit_model(training_set, profile.features, profile.params, jobs=2)
    assert "the training workers failed" in caplog.text
    assert "NotADirectoryError" in caplog.text
    alone, _ = fit_model(training_set, profile.features, profile.params, jobs=1)
    _same(survived, alone)
