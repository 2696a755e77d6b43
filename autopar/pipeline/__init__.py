"""Multi-stage work: every item through all stages on one pool (fused), or each stage on
pools of its own joined by bounded queues (staged, a streaming executor).

::

    items ─► feeder ─► [stage 0 workers] ─► Handoff ─► [stage 1 workers] ─► ... ─► Handoff ─► caller
                       (threads, or driver          (bounded: a producer
                        threads over a process       ahead of the consumer
                        pool, or one thread)         by `queue_size` waits)

* **Fused**: the stages composed into one picklable function (:class:`Fused`) and run by
  :func:`autopar.execute`, which measures and chooses the pool as for any function.
* **Staged**: each stage has its workers: threads that run the function, or driver threads
  that send one item at a time to the stage's process pool, or one thread (serial). Between
  stages a :class:`Handoff` passes items on in input order (or as they finish, for a stage
  with ``ordered=False``), and holds at most ``queue_size`` of them: a slow stage holds the
  ones before it back, so memory stays bounded (in flight at most stages x (queue_size +
  workers)).
* A failing item names its stage and its index; with ``errors="collect"`` an
  :class:`~autopar.ItemFailed` takes its place and passes the later stages untouched.
  stop(), an error or Ctrl-C ends every stage's workers within a second or two (process pools
  are killed), and nothing is left running.

:meth:`Pipeline.optimize` measures each stage on a few items and returns a
:class:`PipelinePlan`; this first version chooses staged where a stage is pinned (a
single-writer sink, a stage that must stay on threads) and fused otherwise, and sizes the
stages' workers by their measured times.

The package, a module an idea: ``compose`` (:class:`Stage`, :class:`Fused`), ``handoff``
(the bounded queue between stages), ``staged`` (:class:`StagedRun`: the stages' workers),
``model`` (the staged model: stage figures, config, predicted time, fused or staged),
``switch`` (a staged run watched against fused), ``plan`` (:class:`PipelinePlan`),
``report`` (:class:`PipelineRun`, :class:`PipelineReport`), ``stream`` (:class:`Stream`),
``checks`` (the arguments), ``api`` (:class:`Pipeline`).
"""

from __future__ import annotations

from .api import Pipeline
from .compose import Fused, Stage
from .handoff import Handoff
from .model import _best_config, _measure
from .plan import PipelinePlan, StagePlan
from .report import PipelineReport, PipelineRun
from .staged import StagedRun, StageMetrics
from .stream import Stream, StreamStalled

__all__ = ["Fused", "Pipeline", "PipelinePlan", "PipelineReport", "PipelineRun", "Stage", "StagePlan", "Stream", "StreamStalled"]
