"""The tuned constants of the sample (:mod:`autopar.tune.sample`) and the model
(:mod:`autopar.tune.model`, :mod:`autopar.tune.predict`), in one place.

Each is named, with what it is on its line; the measurement behind it is in
docs/notes/tune.md. Code reads them as ``constants.NAME`` when it runs, so a test that patches
``autopar.tune.constants.NAME`` changes every user.
"""

from __future__ import annotations

# -- the sample's budget ---------------------------------------------------------------------

SAMPLE_SHARE = 0.025  # share of the estimated total the serial sample (and the probe) may take, on TUNED_CORES
TUNED_CORES = 2  # cores of the machine the budgets were measured on; on C more, share and floor shrink by C / TUNED_CORES
UNKNOWN_SECONDS = 1.0  # work assumed in input of unknown length, by the sample's share and the model
MIN_SAVING = 0.01  # seconds: no pool is worth starting to save less (the model's rule too)
FINISH_SEEN = 4  # a rest under MIN_SAVING runs in the sample once it is at most this many times the items timed
SPIN_MAX = 0.15  # seconds from the sample's start a BLAS pool found running is taken for spinning (measure.LeftSpinning)
CPU_BOUND = 0.5  # the calling thread's CPU/wall from which helper threads count as its own

# -- the first item and the items run ahead beside it ----------------------------------------

SPECULATE_MAX_ITEMS = 1000  # jobs of at most this many items start a second item early
AHEAD_EARLY = 0.005  # seconds after which the items run ahead look whether the first item waits
AHEAD_MAX = 64  # items a short job of waiting items runs at once beside its first
AHEAD_MEMORY_SHARE = 0.05  # of available memory, for the items run ahead (growth so far x count)
WARMUP_OVERLAP = 0.5  # an item beside the first that waited this share of its time waited on it
WARMUP_END = 0.1  # ... and ended within this share of the first item's time from its end

# -- serial batches: items growing along the input -------------------------------------------

GROWTH_POINTS = 4  # timed batches from which a trend along the input is fitted
GROWTH_FIT = 0.8  # R^2 of the linear fit from which items count as growing
GROWTH_FACTOR = 1.5  # items ahead at least this much over the mean so far

# -- the BLAS step ----------------------------------------------------------------------------

BLAS_STEP_MIN_ITEMS = 40  # items left from which two are worth timing with BLAS capped on suspicion
BLAS_STEP_MIN_NATIVE = 4  # the same where native threads were seen computing, or others' work wanted every core
PURE_COMPUTE = 0.9  # CPU/wall from which items are timed with BLAS capped on suspicion
BLAS_FASTER = 0.9  # items this much faster with BLAS at one thread are BLAS work
NATIVE_FASTER = 0.95  # the same, for items native threads were seen computing beside
NATIVE_THREADS = 1.3  # items' CPU/wall from which native threads computed beside them
BLAS_IDLE = 0.02  # native threads' CPU, as a share of the sample so far, under which a loaded BLAS pool was not used

# -- the concurrency probe --------------------------------------------------------------------

IO_BOUND = 0.3  # CPU/wall under which work is probed on IO_PROBE_THREADS threads
IO_PROBE_THREADS = 16  # probe threads for work that mostly waits
PROBE_MIN_WORK = 0.03  # seconds of work left, under which no pool can win back what a probe costs
PROBE_ROUND_MIN = (0.006, 0.02)  # seconds of work per thread: first round, second round
WAIT_ROUND_MIN = 0.002  # ... a first round of waiting work on more threads than CPUs
SECOND_ROUND_SHARE = 0.5  # a second probe round takes at most this share of the items left
LONG_ROUND_SHARE = 0.1  # ... and a longer one (an unclear first reading) about this share, if more than a first round
PROBE_CLEAR = (1.15, 0.85)  # a round scaling <= 1.15, or >= 0.85 k, settles the probe
WAIT_CLEAR = 0.3  # ... or >= 0.3 k on more threads than CPUs (waiting work; computing work: 0.85 of CPUs / its CPU share)
SLOWER_TOGETHER = 0.85  # a round's throughput under this (of one thread's) settles a low reading at once
PARALLEL_SCALING = 0.75  # a probe this close to k threads' worth: the work does not hold the GIL
SHARED_RESOURCE_SCALING = 0.85  # under this (CPU/wall under 0.9): threads share a resource outside Python
CHEAP_MISREAD = 0.05  # pickling an item and its result, over its time: under it a reading for processes settles at once

# -- the sample in a worker process -----------------------------------------------------------

REMOTE_GRACE = 1.0  # seconds past a batch's time limits before its worker counts as stuck
REMOTE_STARTUP = 30.0  # more for the first batch: a spawned worker imports before it runs anything

# -- the model: what kind of work -------------------------------------------------------------

CPU_RATIO_CPU = 0.75  # CPU/wall from which work is "cpu"
CPU_RATIO_IO = 0.3  # CPU/wall up to which work is "io"
PURE_CPU = 0.95  # CPU/wall from here on: the item never waits

# -- the model: choosing ----------------------------------------------------------------------

MIN_SPEEDUP = 1.1  # parallel must predict this much faster than serial to win
TRANSFER_DOUBT = 2.0  # processes must win with their pickling at this many times the measured cost
THREAD_PREFERENCE = 1.05  # threads win over processes predicted within this
WAITING_THREAD_PREFERENCE = 1.15  # ... within this for work that waits (CPU/wall under PURE_CPU)
FEWER_WORKERS = 1.03  # candidates of one kind this close in time: the fewest workers win

# -- the model: workers and chunks ------------------------------------------------------------

MEMORY_SHARE = 0.8  # share of available memory the workers may take
MAX_THREADS = 64  # threads at most
CHUNK_SECONDS = 0.2  # a chunk holds about this much work at most, unless the model needs more
FEW_ITEMS = 4  # items a core, up to which every item may get a worker of its own

# -- the model: a Dask cluster ----------------------------------------------------------------

DASK_TASK_SECONDS = 1e-3  # a task's round trip through a Dask scheduler
DASK_TASK_SHARE = 0.05  # a task's round trip at most this share of its work, where items allow
LOCAL_PREFERENCE = 1.2  # a local pool within this of the cluster wins: nothing leaves the machine

# -- other processes -------------------------------------------------------------------------

OTHERS_MIN_WINDOW = 0.05  # seconds: shorter windows of /proc/stat's clock ticks read 0
OTHERS_MIN_CORES = 0.3  # others' use under this many cores is the background: no share taken for it
OTHERS_QUEUED_SHARE = 0.15  # the calling thread's share of runnable time spent waiting from which others wanted more
OTHERS_SATURATED = 0.9  # others wanting this share of the usable cores or more left none free (no probe; the BLAS step's short-job rule)
OTHERS_MAX_PER_CORE = 4.0  # others' demand read from one thread's share is capped at this many a core
