"""Running the work: :mod:`.execute` (the public calls, options, the serial path),
:mod:`.dispatch` (chunks to a pool and back in input order), :mod:`.recovery` (timeouts, dead
workers, retries), :mod:`.report` (ExecutionReport, progress)."""

from .execute import ExecutionIterator, ExecutionReport, execute, execute_iter

__all__ = ["ExecutionIterator", "ExecutionReport", "execute", "execute_iter"]
