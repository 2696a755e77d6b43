"""Where work runs: the one backend layer under execute()'s runs, a pipeline's staged stages and
the Manager's lanes, and the only place pools are made and stopped (:mod:`.base`: the
:class:`~.base.Backend` interface; :mod:`._cpython`: the only reader of CPython internals).

One way to stop a running item per backend kind (and how its own time limit is kept):

========  =================================================  ===============================
kind      stop one running item (``Backend.stop``)           the item's own time limit
========  =================================================  ===============================
serial    none: it runs in the caller                        the deadline watcher
thread    the deadline watcher (:func:`.worker.stop_thread`)  the deadline watcher
          raises into its thread at the next bytecode; a
          call into C stops when it returns (a Manager's
          call still stuck after a grace period is let go)
process   kill its worker (:func:`.process.kill_worker`,     SIGALRM in the worker
          :meth:`.slots.Slots.kill`) and replace the pool;   (:func:`.worker.run_remote`,
          the other items in it run again                    :func:`.worker.run_call`)
dask      cancel its task, give its worker no more of the    the deadline watcher on the
          run's tasks (a thread there cannot be stopped)     worker's thread
========  =================================================  ===============================

The users: execute()'s stuck process pool is killed and replaced (``Backend.replace``), a
thread run past its items' limits raises; the Manager's thread lane stops a call by
``stop_thread`` (a cancel, its time limit), its process lane by killing the call's worker
(a cancel; its limit + a grace period when the alarm cannot reach it); a pipeline's process
stage kills its pool when the run stops.
"""
