"""A long-lived service API: one manager for CPU and I/O work, sync and asyncio, throttled,
measured, resilient (``Manager``, ``get_manager``, ``Retry``, ``CircuitBreaker``)."""

from .manager import Manager, get_manager
from .policy import CircuitBreaker, CircuitOpen, Retry

__all__ = ["CircuitBreaker", "CircuitOpen", "Manager", "Retry", "get_manager"]
