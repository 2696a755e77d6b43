"""The tuned constants of the sample (:mod:`autopar.tune.sample`) and the model
(:mod:`autopar.tune.model`, :mod:`autopar.tune.predict`), in one place.

Each is named, with what it is on its line and the measurement behind it on the line above
("not measured" where none is recorded). Code reads them as ``constants.NAME`` when it runs,
so a test that patches ``autopar.tune.constants.NAME`` changes every user.
"""

from __future__ import annotations

# -- the sample's budget ---------------------------------------------------------------------

# Not measured (on 2 cores a serial share f of the job costs about f of the parallel run's time).
SAMPLE_SHARE = 0.025  # share of the estimated total the serial sample (and the probe) may take
# Input of unknown length is taken to hold this much work, for the sample's share as for the
# model (which assumes no less): a pool picked for a shorter job loses its start, serial
# picked for a longer one the whole speedup. A generator of 341 items of 3 ms spent 0.4 s
# of a 1 s job in the sample when its budget was the full 0.2 s (and the probe half that).
UNKNOWN_SECONDS = 1.0
# Not measured.
MIN_SAVING = 0.01  # seconds: no pool is worth starting to save less (the model's rule too)
# Not measured.
FINISH_SEEN = 4  # a rest under MIN_SAVING runs in the sample once it is at most this many times the items timed
# Not measured.
CPU_BOUND = 0.5  # the calling thread's CPU/wall from which helper threads count as its own

# -- the first item and the items run ahead beside it ----------------------------------------

# Not measured.
SPECULATE_MAX_ITEMS = 1000  # jobs of at most this many items start a second item early
# Not measured.
AHEAD_EARLY = 0.005  # seconds after which the items run ahead look whether the first item waits
# Not measured.
AHEAD_MAX = 64  # items a short job of waiting items runs at once beside its first
# Not measured.
AHEAD_MEMORY_SHARE = 0.05  # of available memory, for the items run ahead (growth so far x count)
# An item queued behind a computing function's first call importing scipy.stats read CPU/wall
# 0.001, and the work ran on 64 threads at 4-7x the serial time; the two shares: not measured.
WARMUP_OVERLAP = 0.5  # an item beside the first that waited this share of its time waited on it
WARMUP_END = 0.1  # ... and ended within this share of the first item's time from its end

# -- serial batches: items growing along the input -------------------------------------------

# 55 items sorted by size, growing from 0.07 to 7 ms, looked like 40 ms of work judged on the
# first ones and ran serially, at 1.63x the best (process x2); the three figures are not measured.
GROWTH_POINTS = 4  # timed batches from which a trend along the input is fitted
GROWTH_FIT = 0.8  # R^2 of the linear fit from which items count as growing
GROWTH_FACTOR = 1.5  # items ahead at least this much over the mean so far

# -- the BLAS step ----------------------------------------------------------------------------

# Not measured.
BLAS_STEP_MIN_ITEMS = 40  # items left from which two are worth timing with BLAS capped
# Work that waits times unevenly: file writes read 10% faster with BLAS capped.
PURE_COMPUTE = 0.9  # CPU/wall from which items are timed with BLAS capped on suspicion
# An SVD of 220 x 220 took 2.6 ms on one OpenBLAS thread, 4.8 ms on two.
BLAS_FASTER = 0.9  # items this much faster with BLAS at one thread are BLAS work
# Not measured.
NATIVE_FASTER = 0.95  # the same, for items native threads were seen computing beside
# The SVD above read CPU/wall 1.0-2.3; pure Python beside a BLAS pool spinning on read 1.7.
NATIVE_THREADS = 1.3  # items' CPU/wall from which native threads computed beside them

# -- the concurrency probe --------------------------------------------------------------------

# Not measured.
IO_BOUND = 0.3  # CPU/wall under which work is probed on IO_PROBE_THREADS threads
# Not measured.
IO_PROBE_THREADS = 16
# Not measured.
PROBE_MIN_WORK = 0.03  # seconds of work left, under which no pool can win back what a probe costs
# A first round of 6 ms a thread shows clear cases (pure Python at x1, GIL-free work at x k).
PROBE_ROUND_MIN = (0.006, 0.02)  # seconds of work per thread: first round, second round
# 16 threads on sleeps of 1 ms read x15 with 5 items each, where the run would have had 64.
WAIT_ROUND_MIN = 0.002  # ... a first round of waiting work on more threads than CPUs
# Not measured.
SECOND_ROUND_SHARE = 0.5  # a second probe round takes at most this share of the items left
# NumPy small calls, 374 items of 0.5 ms: a second round of 76 items at x1.2 read x1.22 again.
LONG_ROUND_SHARE = 0.1  # ... and a longer one (an unclear first reading) about this share, if more than a first round
# Not measured (a core the host stalls for a few ms read GIL-free work as x1.0 in about one round of four).
PROBE_CLEAR = (1.15, 0.85)  # a round scaling <= 1.15, or >= 0.85 k, settles the probe
# A process's first 64 threads took 53 ms to start and read x24.5; a second round of 20 ms
# sleeps on 65 threads cost 20 ms of a 0.2 s job.
WAIT_CLEAR = 0.3  # ... or >= 0.3 k on more threads than CPUs (waiting work)
# JSON round trips ran x0.6 on 2 threads; their confirming round cost 10 ms of a 0.2 s job.
SLOWER_TOGETHER = 0.85  # a round's throughput under this (of one thread's) settles a low reading at once
# A probe this close to k threads' worth: the work does not hold the GIL (the model's
# rule). GIL-free work (lzma, FFT) still read x1.4-1.6 on 2 threads in about a quarter of
# optimize() calls, and went to processes; work that does hold it part of the time (NumPy
# small calls, processes 3.6x faster than threads) read x1.22-1.35 in 30 calls.
PARALLEL_SCALING = 0.75
# ... and under this (CPU/wall under 0.9), threads slower together than one alone: a shared
# resource outside Python, which processes would share too. Skewed loops read under it when
# one thread drew the long item (17 s ran serially).
SHARED_RESOURCE_SCALING = 0.85
# The second round it saves cost pure-Python jobs of 0.2 s about a tenth of their time; 5% not measured.
CHEAP_MISREAD = 0.05  # pickling an item and its result, over its time: under it a reading for processes settles at once

# -- the sample in a worker process -----------------------------------------------------------

# Not measured.
REMOTE_GRACE = 1.0  # seconds past a batch's time limits before its worker counts as stuck
# Not measured.
REMOTE_STARTUP = 30.0  # more for the first batch: a spawned worker imports before it runs anything

# -- the model: what kind of work -------------------------------------------------------------

# Not measured.
CPU_RATIO_CPU = 0.75  # CPU/wall from which work is "cpu"
# Not measured.
CPU_RATIO_IO = 0.3  # CPU/wall up to which work is "io"
# Not measured.
PURE_CPU = 0.95  # CPU/wall from here on: the item never waits

# -- the model: choosing ----------------------------------------------------------------------

# Not measured.
MIN_SPEEDUP = 1.1  # parallel must predict this much faster than serial to win
# Pickling measured in the caller understates it in a forked worker: objects built there land
# on pages shared with the caller, each first write a copy. JSON round trips of 100 KB dicts
# loaded in 0.6 ms in a worker against 0.4 ms in the caller and ran 1.2-1.6x slower on a
# worker's first pass; processes predicted x1.3 ran no faster than serial.
TRANSFER_DOUBT = 2.0
# Not measured.
THREAD_PREFERENCE = 1.05  # threads win over processes predicted within this
# Work that waits (CPU/wall under PURE_CPU): what process workers contend for while they wait
# (a disk's journal, the parent's copies) is in no figure of the model. File writes and reads:
# process x4 predicted a hair ahead of thread x6, ran 1.8x slower than thread x8.
WAITING_THREAD_PREFERENCE = 1.15
# Not measured.
FEWER_WORKERS = 1.03  # candidates of one kind this close in time: the fewest workers win

# -- the model: workers and chunks ------------------------------------------------------------

# Not measured.
MEMORY_SHARE = 0.8  # share of available memory the workers may take
# Not measured.
MAX_THREADS = 64
# Not measured.
CHUNK_SECONDS = 0.2  # a chunk holds about this much work at most, unless the model needs more
# 7 zlib items of 27 ms ran in 0.10 s on 8 threads (one each, the cores shared), 0.11 s on 2 in 4 rounds.
FEW_ITEMS = 4  # items a core, up to which every item may get a worker of its own

# -- the model: a Dask cluster ----------------------------------------------------------------

# Dask's own figures: 0.2-1 ms.
DASK_TASK_SECONDS = 1e-3  # a task's round trip through a Dask scheduler
# 100,000 tiny items as one task each cost Dask's scheduler seconds.
DASK_TASK_SHARE = 0.05  # a task's round trip at most this share of its work, where items allow
# Not measured.
LOCAL_PREFERENCE = 1.2  # a local pool within this of the cluster wins: nothing leaves the machine

# -- other processes -------------------------------------------------------------------------

# /proc/stat counts CPU time in clock ticks (10 ms here): over a window of 50 ms on 2 cores
# one tick is 0.1 of a core, and shorter windows say little.
OTHERS_MIN_WINDOW = 0.05
# Other processes' use under this many cores is the machine's background (daemons, the
# terminal): no share of the cores is taken from the pools for it. Not measured beyond that.
OTHERS_MIN_CORES = 0.3
# The calling thread waited this share of its runnable time for a core: others wanted more
# than they used (under it, a core was mostly free whenever it asked). Not measured.
OTHERS_QUEUED_SHARE = 0.15
# Others' demand read from one thread's share is capped at this many a core (a thread
# descheduled for long reads as hundreds of competitors). Not measured.
OTHERS_MAX_PER_CORE = 4.0
