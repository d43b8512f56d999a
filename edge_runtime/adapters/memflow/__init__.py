"""MemFlow: a fixed random spiking network whose neurons memorise, per class, how they respond.

``adapter`` holds the ``MemFlow`` class (validation, state, read-out through the Numba kernels in
``edge_runtime.kernels.memflow``); ``calibration`` the source head and the head/memory weighting;
``alignment`` the input stage. The design note: ``docs/memflow.md``.
"""

from edge_runtime.adapters.memflow.adapter import MemFlow
from edge_runtime.adapters.memflow.alignment import InputStage, principal_directions

__all__ = ["InputStage", "MemFlow", "principal_directions"]
