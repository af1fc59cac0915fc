"""The decoding worker processes: one pool, started once and kept warm.

The search and the scorers run per chunk of spectra in these processes
(`parallel_map`). The forkserver they fork from imports what they run once
(`WORKER_PRELOAD`); `start_forkserver` sets it going before the caller's own
imports, so the two overlap. Nothing here imports torch or numba, so it can
start first.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.forkserver
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
_POOL: tuple[int, ProcessPoolExecutor] | None = None  # (workers, pool), kept warm
# Workers fork from a forkserver (not on Windows: there everything runs here).
FORKSERVER = "forkserver" in multiprocessing.get_all_start_methods()


def resolve_workers(workers: int) -> int:
    """Processes to decode with: `workers`, or one per usable CPU core for 0."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parallel_map(function: Callable[[T], R], items: list[T], workers: int) -> list[R]:
    """`function` over `items` in order, in the decoding worker processes.

    The pool (`start_workers`) starts on the first parallel call unless it was
    started before, and is reused by the search and by whatever else runs per
    chunk (`sequence.search_and_score`'s scoring); if it breaks, the work runs
    here. `function` and the items must pickle.
    """
    global _POOL
    workers = resolve_workers(workers) if FORKSERVER else 1
    if workers == 1 or len(items) < 2 or (_POOL is None and not pool_pays(len(items))):
        return [function(item) for item in items]
    try:
        return list(_pool(workers).map(function, items))
    except BrokenProcessPool as error:
        log.warning("decoding workers failed (%s); decoding in this process", error)
        _POOL = None
        return [function(item) for item in items]


# On 2 cores, the 8-step network bundled now spent ~2.4x the CPU of the search
# and scoring beside it: dev, whole process, 2 threads against 1 took 0.77x the
# wall-clock (43.4 / 56.6 s and 43.7 / 56.1 s, in turn), peptide recall 0.353
# against 0.354. Once the network did half the work (~1.1x the search's CPU),
# 1 thread still took 1.13x the wall-clock of 2.
MIN_NETWORK_THREADS = 2


def network_threads(threads: int, workers: int) -> int:
    """Torch threads for the network on a CPU beside `workers` decoding processes.

    `threads` as configured, or for 0 a quarter of the usable cores, at least
    `MIN_NETWORK_THREADS`: the decoding processes keep the cores busy, and a
    thread pool wider than what they leave over spins waiting for its own
    threads; but the 8-step network needs more CPU than the search beside it.
    Searching in this process (one worker), the network keeps torch's own choice.
    """
    if threads > 0:
        return threads
    if resolve_workers(workers) == 1 or not FORKSERVER:
        return 0  # torch's own
    return max(MIN_NETWORK_THREADS, resolve_workers(0) // 4)


POOL_PAYS_AT = 4  # tasks (chunks of 32 spectra) worth starting the workers for


def pool_pays(tasks: int) -> bool:
    """Whether `tasks` chunks pay for starting the worker pool.

    Starting it costs a few seconds of imports (torch, numba, ms2pip) on the
    CPU the work would use; fewer chunks (the demo's 40 spectra are two) are
    done sooner here. A pool already running takes any two or more.
    """
    return tasks >= POOL_PAYS_AT


# What the decoding workers run (the search, the scorers, ms2pip when installed):
# the forkserver imports it once and forks warm workers from itself, so each
# worker does not spend ~4 s of a 2-core CPU importing torch, numba and ms2pip.
WORKER_PRELOAD = ["peptrm.sequence", "ms2pip.core"]  # an ImportError is skipped


# On 2 cores, with the network on 2 threads beside 2 decoding processes, PASSIVE
# took 0.87x the wall-clock of the default (dev, whole process, 2 pairs in turn,
# with a training run on one core), the same rows; on a quiet machine 1.02x.
OMP_WAIT_POLICY = "PASSIVE"
# But a thread that sleeps at once after each parallel region must be woken for
# the next, a few microseconds of Python later: the network alone on 2 threads
# took 1.4-1.6x the wall-clock of the spinning default. libgomp's threads spin
# this many rounds first (~0.03-0.5 ms, by the CPU's pause), then sleep: the
# network alone as fast as spinning, and dev, whole process, 0.949x the
# wall-clock of PASSIVE alone (5 pairs in turn, 0.912-0.998; 0.959x in 3 more),
# system time 1.52 -> 1.16 s, the same rows. 3,000 / 30,000 / 100,000 rounds
# gave 1.015x / 0.994x / 1.014x (3 pairs each).
GOMP_SPINCOUNT = "10000"


def network_threads_sleep() -> None:
    """Let the network's OpenMP threads sleep soon after each parallel region.

    By default libgomp's threads spin for a while after each one, on cores the
    decoding processes are waiting for; here they spin `GOMP_SPINCOUNT` rounds,
    long enough to catch the network's next operation, and then sleep.
    `peptrm sequence` calls this before torch loads (libgomp reads both once,
    when it loads). A value the user set stands.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_FREED_BYTES = 1 << 30  # the heap's free top that stays mapped


def keep_freed_memory() -> None:
    """Serve every allocation from malloc's heap and keep freed memory mapped.

    glibc maps each allocation above its mmap threshold (at most 32 MB) afresh
    and unmaps it when freed, so the network's largest temporaries (the peaks'
    (B, 151, 256) activations, ~40 MB a batch) and the search's bound tables
    had their pages faulted in and zeroed again on every batch. The arithmetic
    is the same; the network's output bit-identical. `peptrm sequence` calls
    this, and each decoding worker as it starts; it does nothing where the C
    library has no `mallopt` (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)


def start_forkserver() -> None:
    """Start the forkserver now, so it imports `WORKER_PRELOAD` in the background.

    `peptrm sequence` calls it before its own imports (torch, the model): on a
    2-core CPU the forkserver's ~4 s of imports then overlap them, and the
    workers fork warm once the first batch needs them. A run that never starts
    the pool leaves an idle forkserver behind, which exits with it.
    """
    if not FORKSERVER:
        return
    _context()


# Each decoding worker computes on one thread (there is one per core): these
# reach the forkserver, and so every worker, and not the caller.
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _context():
    """The forkserver context, its server running with `ONE_THREAD` and the preload.

    The preload is set before the server starts (when not running yet). torch
    and the BLAS in a worker would otherwise each run a pool of threads, one per
    core, beside the other workers: on 2 cores their waiting threads (libgomp)
    took 2.2 CPU-s of the dev run before, ~0.04 s after (one profile each).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    saved = {name: os.environ.get(name) for name in ONE_THREAD}
    os.environ.update(ONE_THREAD)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    return context


def _pool(workers: int) -> ProcessPoolExecutor:
    """The pool of `workers` processes, made on first use.

    Forkserver: the workers do not inherit torch's threads.
    """
    global _POOL
    if _POOL is None or _POOL[0] != workers:
        stop()
        level = logging.getLogger("peptrm").getEffectiveLevel()
        _POOL = (
            workers,
            ProcessPoolExecutor(
                workers,
                mp_context=_context(),
                initializer=_start_worker,
                initargs=(level,),
            ),
        )
    return _POOL[1]


def stop() -> None:
    """Shut the decoding workers down, if they were started; they exit now."""
    global _POOL
    if _POOL is not None:
        _POOL[1].shutdown()
        _POOL = None


def _start_worker(level: int) -> None:
    """Start a worker: it keeps freed memory and logs as its caller does.

    `keep_freed_memory`; peptrm's level, its format, to stderr, so `--verbose`
    shows what the search in the workers says (the searches that ran out of
    budget) as it did when the search ran in the caller.
    """
    from peptrm import LOG_FORMAT

    keep_freed_memory()
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, force=True)
    logging.getLogger("peptrm").setLevel(level)


def start_workers(workers: int) -> set[int]:
    """Start the decoding workers now; their process ids once all of them run.

    `sequence.predictions` calls it in its search thread while the network
    reads the first batch, which would otherwise wait for them. One worker
    (decoding in this process) starts nothing.
    """
    workers = resolve_workers(workers) if FORKSERVER else 1
    if workers == 1:
        return set()
    return set(_pool(workers).map(_ready, range(workers)))


def _ready(_: int) -> int:
    """What a started worker answers `start_workers` with: its process id."""
    return os.getpid()
