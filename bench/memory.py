"""Peak memory of a piece of work, measured three ways; each figure says which way.

- ``rss_peak``: the process's resident-set high-water mark over the work, minus the resident set
  before it. Linux lets a process reset its high-water mark (``/proc/self/clear_refs``, value 5),
  so this is per piece of work and sees every allocator (torch, Numba, numpy). Memory the
  allocator kept from earlier work and reuses is not counted again, so it can read low.
  Without ``clear_refs`` it falls back to ``ru_maxrss``, which cannot be reset: the figure is
  then the whole process's peak so far and is marked as such.
- ``traced_peak``: ``tracemalloc``'s peak over the work: Python and numpy allocations (numpy
  reports to tracemalloc), not memory allocated inside Numba kernels or torch.
- ``torch_step_bytes`` (in ``cost``): exact bytes autograd keeps for backward, plus gradients
  and optimiser state: what backprop adaptation needs beyond inference.
"""

from __future__ import annotations

import resource
import tracemalloc
from pathlib import Path
from typing import Any, Callable

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_peak(work: Callable[[], Any]) -> dict[str, Any]:
    """Run ``work()``; return ``{"bytes": peak RSS growth, "how": ...}``."""
    try:
        _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    if before is not None:
        work()
        peak = _status_kib("VmHWM")
        if peak is not None:
            return {
                "bytes": max(0, peak - before) * 1024,
                "how": "RSS high-water mark over the work minus RSS before (VmHWM reset by /proc/self/clear_refs)",
            }
    work()
    return {
        "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "how": "ru_maxrss: peak RSS of the whole process so far (not resettable here)",
    }


def traced_peak(work: Callable[[], Any]) -> dict[str, Any]:
    """Run ``work()`` under tracemalloc; return its peak traced allocation."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    return {
        "bytes": max(0, peak - base),
        "how": "tracemalloc peak (Python and numpy allocations; not inside Numba kernels or torch)",
    }


__all__ = ["rss_peak", "traced_peak"]
