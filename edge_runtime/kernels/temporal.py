"""Temporal filter kernels: a camera's frames are not independent, so read each one with the last.

The class in view is modelled as a Markov chain that stays with probability s and otherwise
draws a class from the source's class frequencies pi (an HMM; its forward pass): with the frame's
own posterior p_t (from any head, which already holds pi),

    belief_t(k) ~ p_t(k) / pi(k) * (s belief_{t-1}(k) + (1 - s) pi(k)),

so s = 0 gives belief_t = p_t exactly. s is not a setting: it is measured on the stream, label-
free, from how the frames' own posteriors agree. With A_l = mean p_t . p_{t-l} (frames l apart)
and c = mean p_t . p_t, frames L apart (b = A_L, L = ``lag``) stand for two independent frames of
the stream as it is now, and the chain gives A_l - b ~ (c' - b) s^l for l << L, c' the agreement
of two frames of one class. Hence

    s_c = (A_1 - b) / (c - b) = s (c' - b) / (c - b) <= s      (conservative: c' <= c), and
    s_r = (A_2 - b) / (A_1 - b) = s                            (c' cancels),

and the filter uses min(s_r, 3 s_c), times n / (n + n_0) (trust grows with the lagged pairs
seen), clipped to [0, s_max]: the ratio undoes the conservative estimate's bias when frames of
one class disagree (two different photos of a bird; a classifier right 60% of the time), by at
most a factor 3, so that on a shuffled stream, where A_1 = A_2 = b in expectation and the ratio is
noise over noise, s stays ~0 and the filter stands aside. b comes from the stream's own recent
past, not from its long-run mean posterior: when the domain or the class mix drifts, consecutive
frames share the new mix, which a long-run mean would read as staying. Everything errs towards
less smoothing: a class held for longer than L frames raises b too. The filter never touches the
memory (the head and memory learn from p_t, not from the belief), so, like LAME's output
regularisation, it cannot drift; the moments are EMAs (factor gamma), so s follows a scene that
changes pace.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# moments: sums of p_t.p_{t-1}, p_t.p_t and their count; of p_t.p_{t-2} and its count; of
# p_t.p_{t-L} and its count (each an EMA of factor gamma)
N_MOMENTS = 7
_KAPPA = 3.0  # most the ratio may raise the conservative estimate by (a guard, not tuned)


@njit(cache=True, error_model="numpy")
def stay(moments: np.ndarray, trust: float, most: float) -> float:
    """The measured stay probability s (see the module docstring).

    >>> moments = np.array([0.9, 1.0, 1.0, 0.8, 1.0, 0.44, 1.0])  # A_1 .9, c 1, A_2 .8, A_L .44
    >>> round(stay(moments, 0.0, 0.95), 4)  # (0.8 - 0.44) / (0.9 - 0.44)
    0.7826
    """
    if moments[2] <= 0.0 or moments[6] <= 0.0:
        return 0.0
    a = moments[0] / moments[2]
    c = moments[1] / moments[2]
    b = moments[5] / moments[6]
    if c - b <= 1e-9:
        return 0.0
    s = (a - b) / (c - b)
    if moments[4] > 0.0 and a - b > 0.0:
        s = min((moments[3] / moments[4] - b) / (a - b), _KAPPA * s)
    s *= moments[6] / (moments[6] + trust)
    return min(max(s, 0.0), most)


@njit(cache=True, error_model="numpy")
def _agree(p: np.ndarray, q: np.ndarray) -> float:
    total = 0.0
    for k in range(p.shape[0]):
        total += float(p[k]) * float(q[k])
    return total


@njit(cache=True, error_model="numpy")
def step(
    p: np.ndarray,
    class_prior: np.ndarray,
    belief: np.ndarray,
    history: np.ndarray,
    moments: np.ndarray,
    frames: np.ndarray,
    gamma: float,
    trust: float,
    most: float,
) -> None:
    """Filter one frame in place: ``p`` (K,) float32, the frame's own posterior, becomes the belief;
    the moments and the ring ``history`` (L, K) of own posteriors take it afterwards; ``frames``
    (1,) counts the frames seen. Nothing is allocated."""
    n_classes = p.shape[0]
    lag = history.shape[0]
    seen = frames[0]
    s = stay(moments, trust, most)
    if seen > 0:
        moments[0] = gamma * moments[0] + _agree(p, history[(seen - 1) % lag])
        moments[1] = gamma * moments[1] + _agree(p, p)
        moments[2] = gamma * moments[2] + 1.0
    if seen > 1 and lag > 1:
        moments[3] = gamma * moments[3] + _agree(p, history[(seen - 2) % lag])
        moments[4] = gamma * moments[4] + 1.0
    if seen >= lag:
        moments[5] = gamma * moments[5] + _agree(p, history[seen % lag])  # L before, about to be overwritten
        moments[6] = gamma * moments[6] + 1.0
    slot = history[seen % lag]
    for k in range(n_classes):
        slot[k] = p[k]
    frames[0] = seen + 1
    if seen == 0:
        for k in range(n_classes):
            belief[k] = p[k]
        return
    total = 0.0
    for k in range(n_classes):
        v = float(p[k]) / class_prior[k] * (s * belief[k] + (1.0 - s) * class_prior[k])
        belief[k] = v
        total += v
    for k in range(n_classes):
        belief[k] /= total
        p[k] = belief[k]
