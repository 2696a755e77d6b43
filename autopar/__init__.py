"""autopar: measure a batch of work, then run it the best way.

``optimize(func, data)`` samples the work and returns an :class:`OptimizationResult` (serial,
thread or process pool, ``n_jobs``, ``chunksize``, and why); ``execute(func, data)`` runs it that
way and returns the results in input order.
"""

from ._version import __version__
from .errors import AutoparError, ItemFailed, ItemTimeout, RemoteTraceback, WorkerDied, WorkerError
from .backends.pools import SerialExecutor
from .run import ExecutionIterator, ExecutionReport, execute, execute_iter
from .pipeline import Pipeline, PipelinePlan, Stage, Stream, StreamStalled
from .benchmark import BenchReport, bench
from .service import CircuitBreaker, CircuitOpen, Manager, Retry, get_manager
from .tune.costs import PoolCosts, pool_costs, use_runner
from .tune.model import Candidate
from .tune.optimize import optimize
from .tune.result import OptimizationResult, get_executor
from .tune.sample import Profile
from .tune.system import SystemInfo, system_info, usable_cores

use_runner(execute)  # pool costs time a thread chunk through the runner, a floor above them
del use_runner

__all__ = [
    "AutoparError", "BenchReport", "Candidate", "CircuitBreaker", "CircuitOpen", "ExecutionIterator",
    "ExecutionReport", "ItemFailed", "ItemTimeout", "Manager", "OptimizationResult", "Pipeline", "PipelinePlan",
    "PoolCosts", "Profile", "RemoteTraceback", "Retry", "SerialExecutor", "Stage", "Stream", "StreamStalled",
    "SystemInfo", "WorkerDied", "WorkerError", "bench", "execute", "execute_iter", "get_executor", "get_manager",
    "optimize", "pool_costs", "system_info", "usable_cores",
]
