"""Where chunks run: :mod:`.pools` (serial, thread and process pools, BLAS limits, shutdown),
:mod:`.worker` (one chunk, in a thread or a process worker)."""
