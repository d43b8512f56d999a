"""Temporal filter kernels: a camera's frames are not independent, so read each one with the last.

The class in view is modelled as a Markov chain that stays with probability s and otherwise
draws a class from the source's class frequencies pi (an HMM; its forward pass): with the frame's
own posterior p_t (from any head, which already holds pi),

    belief_t(k) ~ p_t(k) / pi(k) * (s belief_{t-1}(k) + (1 - s) pi(k)),

so s = 0 gives belief_t = p_t exactly. s is not a setting: it is measured on the stream, label-
free, from how the frames' own posteriors agree. With A_l = mean p_t . p_{t-l} (frames l apart),
c = mean p_t . p_t and b = |m|^2 (m the mean posterior: the agreement of two independent frames),
the chain gives A_l - b = (c' - b) s^l, c' the agreement of two frames of one class. Hence

    s_c = (A_1 - b) / (c - b) = s (c' - b) / (c - b) <= s      (conservative: c' <= c), and
    s_r = (A_2 - b) / (A_1 - b) = s                            (c' cancels),

and the filter uses min(s_r, 3 s_c), times n / (n + n_0) (trust grows with the pairs seen),
clipped to [0, s_max]: the ratio undoes the conservative estimate's bias when frames of one class
disagree (two different photos of a bird; a classifier right 60% of the time), by at most a
factor 3, so on a shuffled stream, where A_1 = b in expectation and the ratio is noise over noise,
s stays ~0 and the filter stands aside. The filter never touches the memory (the head and memory
learn from p_t, not from the belief), so, like LAME's output regularisation, it cannot drift; the
moments are EMAs (factor gamma), so s follows a scene that changes pace.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# moments: [0] sum p_t.p_{t-1}, [1] sum p_t.p_t, [2] pairs, [3] frames, [4] sum p_t.p_{t-2}, [5] pairs at
# lag 2 (each an EMA of factor gamma)
N_MOMENTS = 6
_KAPPA = 3.0  # most the ratio may raise the conservative estimate by (a guard, not tuned)


@njit(cache=True, error_model="numpy")
def stay(moments: np.ndarray, marginal: np.ndarray, trust: float, most: float) -> float:
    """The measured stay probability s (see the module docstring); ``marginal`` (K,) is the EMA sum
    of the posteriors, of weight moments[3].

    >>> moments = np.array([0.9, 1.0, 1.0, 1.0, 0.8, 1.0])  # A_1 0.9, c 1, A_2 0.8; b = 0.44 below
    >>> round(stay(moments, np.array([0.6, 0.2, 0.2]), 0.0, 0.95), 4)  # (0.8 - 0.44) / (0.9 - 0.44)
    0.7826
    """
    if moments[2] <= 0.0 or moments[3] <= 0.0:
        return 0.0
    a = moments[0] / moments[2]
    c = moments[1] / moments[2]
    b = 0.0
    for k in range(marginal.shape[0]):
        m = marginal[k] / moments[3]
        b += m * m
    if c - b <= 1e-9:
        return 0.0
    s = (a - b) / (c - b)
    if moments[5] > 0.0 and a - b > 0.0:
        a2 = moments[4] / moments[5]
        s = min((a2 - b) / (a - b), _KAPPA * s)
    s *= moments[2] / (moments[2] + trust)
    return min(max(s, 0.0), most)


@njit(cache=True, error_model="numpy")
def step(p: np.ndarray, class_prior: np.ndarray, belief: np.ndarray, last: np.ndarray, last2: np.ndarray,
         marginal: np.ndarray, moments: np.ndarray, gamma: float, trust: float, most: float) -> None:
    """Filter one frame in place: ``p`` (K,) float32, the frame's own posterior, becomes the belief;
    the moments, ``marginal``, ``last`` and ``last2`` (the two previous own posteriors) take p
    afterwards. Nothing is allocated."""
    n_classes = p.shape[0]
    first = moments[3] <= 0.0
    s = stay(moments, marginal, trust, most)
    if first:
        for k in range(n_classes):
            belief[k] = p[k]
    else:
        total = 0.0
        for k in range(n_classes):
            v = float(p[k]) / class_prior[k] * (s * belief[k] + (1.0 - s) * class_prior[k])
            belief[k] = v
            total += v
        for k in range(n_classes):
            belief[k] /= total
        a = 0.0
        c = 0.0
        for k in range(n_classes):
            a += float(p[k]) * last[k]
            c += float(p[k]) * float(p[k])
        if moments[2] > 0.0:  # a pair was seen before, so a frame two back exists
            a2 = 0.0
            for k in range(n_classes):
                a2 += float(p[k]) * last2[k]
            moments[4] = gamma * moments[4] + a2
            moments[5] = gamma * moments[5] + 1.0
        moments[0] = gamma * moments[0] + a
        moments[1] = gamma * moments[1] + c
        moments[2] = gamma * moments[2] + 1.0
    moments[3] = gamma * moments[3] + 1.0
    for k in range(n_classes):
        marginal[k] = gamma * marginal[k] + p[k]
        last2[k] = last[k]
        last[k] = p[k]
        p[k] = belief[k]
