"""The cross-validation folds and the final fit of ``train``, on several cores.

The fits are most of ``mailsift train``'s time (each is ``epochs`` passes of
:meth:`LinearModel.step`, which holds the GIL) and they are independent of
each other, so with ``jobs`` > 1 they run at once in joblib's worker
processes, the package the design card names for this.  The features go to
the workers once, packed into three flat arrays that joblib memory-maps from
a temporary folder instead of copying them into every task; a fold sends
back its margins, the final fit its model, over joblib's own channel between
our processes (no model file is ever pickled).  Each fit is deterministic,
so the results are those of one process, bit for bit.

A worker that dies (the kernel's OOM killer on a small box), or workers
that cannot start or fail (the memory-map folder missing, read-only or
full; a MemoryError in a worker) do not lose the training: the fits are run
again in this process, with a warning naming the cause.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .model import LinearModel, TrainParams, Vec
from .tokens import FeatureSettings

log = logging.getLogger(__name__)

#: fewer messages than this and the fits run in this process: starting the
#: workers (about a second each) costs more than it saves
PARALLEL_MIN_MESSAGES = 2000

#: one fit: the rows it trains on, and the rows it scores (None: return the model)
Task = tuple[np.ndarray, "np.ndarray | None"]


def usable_cpus() -> int:
    """The cores this process may run on (a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_fits(
    X: list[Vec],
    y: np.ndarray,
    tasks: list[Task],
    settings: FeatureSettings,
    params: TrainParams,
    jobs: int = 1,
) -> list:
    """For each task, the margins of its scored rows, or its fitted model."""
    workers = min(jobs, len(tasks))
    if workers < 2 or len(y) < PARALLEL_MIN_MESSAGES:
        return [_fit(X, y, train, test, settings, params) for train, test in tasks]
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    packed = _pack(X)
    try:
        return Parallel(n_jobs=workers, backend="loky")(
            delayed(_fit_packed)(packed, y, train, test, settings, params) for train, test in tasks
        )
    except TerminatedWorkerError as exc:
        log.warning("a training worker died (%s); fitting again in this process", exc)
    except Exception as exc:  # noqa: BLE001 - said, then the same fits here: an error of theirs recurs
        # the workers' side can fail where one process would not: the memory-map
        # folder (JOBLIB_TEMP_FOLDER, /dev/shm, TMPDIR) missing, read-only or
        # full, a worker out of memory with its own copy of a model; a
        # traceback there lost the training (exit 1, which means spam to a caller)
        log.warning(
            "the training workers failed (%s; JOBLIB_TEMP_FOLDER or --jobs 1 avoid them); "
            "fitting again in this process",
            _cause(exc),
        )
    return [_fit(X, y, train, test, settings, params) for train, test in tasks]


def _cause(exc: BaseException) -> str:
    """The first error behind ``exc``, in one line: joblib wraps a worker's
    (or its feeder thread's) error in a PicklingError whose cause is the
    remote traceback's text, whose last line names it."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in str(exc).splitlines() if line.strip() and line.strip() != '"""']
    last = lines[-1].strip() if lines else ""
    return last if type(exc).__name__ == "_RemoteTraceback" else f"{type(exc).__name__}: {last}"


def _fit(X, y, train, test, settings, params):
    model = LinearModel(settings, params).fit([X[i] for i in train], y[train])
    if test is None:
        return model
    return model.decision_function([X[i] for i in test])


def _pack(X: list[Vec]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row offsets, slots and values of all messages, CSR-style."""
    indptr = np.zeros(len(X) + 1, dtype=np.int64)
    np.cumsum([len(idx) for idx, _ in X], out=indptr[1:])
    if not X:
        return indptr, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return indptr, np.concatenate([idx for idx, _ in X]), np.concatenate([val for _, val in X])


def _unpack(packed: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[Vec]:
    indptr, indices, values = (np.asarray(a) for a in packed)  # plain views of joblib's memory maps
    return [(indices[a:b], values[a:b]) for a, b in zip(indptr[:-1].tolist(), indptr[1:].tolist())]


def _fit_packed(packed, y, train, test, settings, params):
    """:func:`_fit` in a worker, on the packed features."""
    return _fit(_unpack(packed), y, train, test, settings, params)
