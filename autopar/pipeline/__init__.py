"""Multi-stage work: every item through all stages on one pool (fused: the stages composed into
one picklable :class:`Fused`, run by :func:`autopar.execute`), or each stage on workers of its
own joined by bounded :class:`Handoff` queues (staged). A failing item names its stage and
index; stop(), an error or Ctrl-C ends every stage's workers. A module an idea: ``compose``,
``handoff``, ``staged``, ``model``, ``switch``, ``plan``, ``report``, ``stream``, ``checks``,
``api`` (:class:`Pipeline`).
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
