"""The in-process transport: the :class:`~visionloop.serving.runner.Runner` itself.

Queue, batcher and model threads live in the API process; nothing to connect to. It is the
default, and the engine a Redis worker runs its jobs through.
"""

from visionloop.serving.runner import Runner as MemoryTransport

__all__ = ["MemoryTransport"]
