"""Deciding how to run: :mod:`.system` (machine facts), :mod:`.costs` (measured pool costs),
:mod:`.sample` (measure items), :mod:`.model` (predicted time per candidate),
:mod:`.optimize` (the public call) and :mod:`.result` (what it returns)."""
