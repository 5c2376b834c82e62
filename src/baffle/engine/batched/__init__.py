"""The batched engine: P perturbed models evaluated as one P-times-wider model (see :mod:`.engine`).

``program`` traces and interprets the model, ``kernels`` evaluates each op for P members, ``planner``
sizes the chunks from a memory budget, ``engine`` ties them behind the Engine interface.
"""

from baffle.engine.batched.engine import BatchedEngine

__all__ = ["BatchedEngine"]
