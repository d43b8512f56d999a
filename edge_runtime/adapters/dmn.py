"""DMN, dual memory networks (arXiv 2403.17589), over a pluggable prior classifier.

A dynamic memory of unlabelled test features (per class, a fixed ring of L slots, written by
the prior's pseudo-label) and a static memory of labelled features (per class, S slots) each
read out a sample-adaptive classifier; their probabilities are added to the prior's. DMN itself
uses CLIP text embeddings as the prior; no vision-language weights ship here, so the prior is a
plug-in: the source linear head (``"linear"``, the default), source class prototypes
(``"prototypes"``), or a (classes x d) text-embedding matrix from a ``.npy`` file (``"text"``).

Two departures from the official code, both deliberate:

- The official code writes the sample into the dynamic memory and then reads the memory with the
  sample in it, so the sample retrieves itself at weight exp(0) = 1 and DMN mostly echoes the
  prior. Here the read-out skips the slot the sample was just written to.
- The official code chooses the fusion weights by grid search on the test labels. Here they are
  fixed defaults, chosen on held-out development tasks and source data (see ``DEFAULTS_NOTE``).
- DMN sits behind the back-to-source feature shift stage (FOA; ``shift_momentum``), because on
  this data the shift is what recovers accuracy: on the dev tasks the memories alone were at
  best level with the linear head. ``shift_momentum=None`` gives DMN without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.adapters.base import Adapter, as_features, as_labels
from edge_runtime.adapters.linear import Linear
from edge_runtime.adapters.ncm import NCM
from edge_runtime.adapters.shift import MOMENTUM, FeatureShift
from edge_runtime.errors import InputError
from edge_runtime.kernels import dmn as kernels
from edge_runtime.numerics import softmax

PRIORS = ("linear", "prototypes", "text")
ANCHORS = ("prior", "source-means")

DEFAULTS_NOTE = (
    "beta=5.5 is DMN's and L=50 the paper's memory length. scale=10, weight_dynamic=0.1, "
    "write_gate=0.5 and weight_static=0 were chosen by grid search on the four held-out dev "
    "corruption tasks of the accuracy bench (speckle_noise, gaussian_blur, spatter, saturate), never "
    "on a scored target; the shift stage's momentum is the one the shift baseline chose on the same tasks. "
    "With DMN's own read-out scale 100 and weight 1 (no shift) it scored 50.3 against the linear "
    "head's 57.8 on three of those dev tasks; the chosen defaults scored 65.9 against 63.3 on all four."
)


def load_text_embeddings(path: str | Path, n_classes: int | None = None, dim: int | None = None) -> np.ndarray:
    """Read a (classes x d) float matrix of class text embeddings from ``.npy``; rows L2-normalised."""
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read text embeddings {path}: {exc}; save a (classes, d) float array with np.save"
        ) from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise InputError(
            f"text embeddings {path} must be a 2-D float array (classes, d), got {matrix.dtype} {matrix.shape}"
        )
    if n_classes is not None and matrix.shape[0] != n_classes:
        raise InputError(f"text embeddings {path} have {matrix.shape[0]} rows, the labels have {n_classes} classes")
    if dim is not None and matrix.shape[1] != dim:
        raise InputError(f"text embeddings {path} have width {matrix.shape[1]}, the features have {dim}")
    return as_features(matrix.astype(np.float32))


class DMN(Adapter):
    """Dual memory (dynamic ring of test features + static labelled memory) fused with a prior.

    Parameters
    ----------
    prior
        ``"linear"`` (source logistic-regression head, :class:`~edge_runtime.adapters.linear.Linear`),
        ``"prototypes"`` (source class means, :class:`~edge_runtime.adapters.ncm.NCM`) or ``"text"``
        (rows of the matrix at ``text_embeddings``, probabilities ``softmax(scale * T f)``).
    text_embeddings
        Path of a (classes x d) ``.npy`` matrix, required for ``prior="text"``.
    memory_length
        L, slots per class in the dynamic ring.
    static_length
        S, slots per class in the static memory (labelled features from ``fit`` and ``teach``).
    beta, scale
        Read-out of a memory: a_l = exp(-beta (1 - cos)), p = softmax(scale * prototype . f).
    prior_scale
        The prototype and text priors are ``softmax(prior_scale * cos)`` (CLIP's logit scale 100).
    weight_dynamic, weight_static
        Fusion p = p_prior + weight_dynamic p_dynamic + weight_static p_static (then renormalised).
    write_gate
        A sample enters the dynamic memory only if the entropy of its prior prediction is at most
        ``write_gate * log(classes)`` (1.0 admits everything, as DMN does).
    anchors
        What an empty class reads as: ``"prior"``, the prior's own class vectors (the normalised
        rows of the linear head, the source class means, or the text embeddings), or
        ``"source-means"``, the normalised source class means.
    shift_momentum
        DMN sits behind the back-to-source feature shift stage
        (:class:`~edge_runtime.adapters.shift.FeatureShift`, FOA) with this EMA momentum: the prior
        and both memories see f + (mu_source - mu_target). ``None`` turns the stage off.
    skip_own_slot
        Read the dynamic memory without the slot the sample was just written to (the fix). False
        reproduces the official code's self-retrieval, for the ablation only.
    seed
        Which source samples fill the static memory when a class has more than S.

    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(2, 1, (40, 8)), rng.normal(-2, 1, (40, 8))]).astype(np.float32)
    >>> dmn = DMN(prior="prototypes").fit(x, np.repeat([0, 1], 40))
    >>> dmn.adapt(np.full((1, 8), -1.0, dtype=np.float32)).argmax(axis=1)
    array([1])
    """

    name = "dmn"
    can_teach = True
    can_forget = True
    LEGACY = {"shift_balanced": False}  # states written before the balanced stage keep the EMA

    def __init__(
        self,
        prior: str = "linear",
        text_embeddings: str | None = None,
        memory_length: int = 50,
        static_length: int = 16,
        beta: float = 5.5,
        scale: float = 10.0,
        prior_scale: float = 100.0,
        weight_dynamic: float = 0.1,
        weight_static: float = 0.0,
        write_gate: float = 0.5,
        anchors: str = "prior",
        shift_momentum: float | None = MOMENTUM,
        skip_own_slot: bool = True,
        seed: int = 0,
        shift_balanced: bool = False,
    ) -> None:
        self.prior = prior
        self.text_embeddings = text_embeddings
        self.memory_length = memory_length
        self.static_length = static_length
        self.beta = beta
        self.scale = scale
        self.prior_scale = prior_scale
        self.weight_dynamic = weight_dynamic
        self.weight_static = weight_static
        self.write_gate = write_gate
        self.anchors = anchors
        self.shift_momentum = shift_momentum
        self.skip_own_slot = skip_own_slot
        self.seed = seed
        self.shift_balanced = shift_balanced

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, features: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> "DMN":
        """Fit the prior on labelled (source) features and put up to S of them per class in the static memory."""
        if self.prior not in PRIORS:
            raise InputError(f"unknown DMN prior {self.prior!r}; choose one of {', '.join(PRIORS)}")
        x = as_features(features)
        y = as_labels(labels, len(x), n_classes)
        n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
        d = x.shape[1]
        means = np.zeros((n_classes, d), dtype=np.float64)
        np.add.at(means, y, x)
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        if (norms[:, 0] == 0).any():
            missing = int(np.flatnonzero(norms[:, 0] == 0)[0])
            raise InputError(f"class {missing} has no labelled example: DMN needs every class in fit")
        anchors = (means / norms).astype(np.float32)
        if self.anchors not in ANCHORS:
            raise InputError(f"unknown anchors {self.anchors!r}; choose one of {', '.join(ANCHORS)}")
        self._prior_head: Adapter | None = None
        if self.prior == "linear":
            head = Linear().fit(x, y, n_classes)
            self._prior_head = head
            if self.anchors == "prior":
                anchors = as_features(np.array(head.weight))
        elif self.prior == "prototypes":
            self._prior_head = NCM(temperature=1.0 / self.prior_scale).fit(x, y, n_classes)
        else:
            if self.text_embeddings is None:
                raise InputError("prior='text' needs text_embeddings=<path of a (classes, d) .npy matrix>")
            text = load_text_embeddings(self.text_embeddings, n_classes, d)
            self._text = text
            if self.anchors == "prior":
                anchors = text
        # The anchors are the prior's class vectors in feature space: what an empty ring reads as.
        self._anchors = np.ascontiguousarray(anchors)
        self._n_classes, self._dim = n_classes, d
        self._stage = (
            None
            if self.shift_momentum is None
            else FeatureShift(self.shift_momentum, balanced=self.shift_balanced).fit(x, y, n_classes)
        )
        self._allocate()
        rng = np.random.default_rng(self.seed)
        for c in range(n_classes):
            rows = np.flatnonzero(y == c)
            if len(rows) > self.static_length:
                rows = np.sort(rng.choice(rows, self.static_length, replace=False))
            self._teach_rows(x[rows], np.full(len(rows), c))
        return self

    def _allocate(self) -> None:
        c, d = self._n_classes, self._dim
        L, S = int(self.memory_length), int(self.static_length)
        if L < 1 or S < 1:
            raise InputError(f"memory_length and static_length must be >= 1, got {L} and {S}")
        self._ring = np.zeros((c, L, d), dtype=np.float32)
        self._ring_entropy = np.full((c, L), np.inf, dtype=np.float32)
        self._ring_fill = np.zeros(c, dtype=np.int32)
        self._ring_gram = np.zeros((c, L, L), dtype=np.float32)
        self._static = np.zeros((c, S, d), dtype=np.float32)
        self._static_entropy = np.full((c, S), np.inf, dtype=np.float32)
        self._static_fill = np.zeros(c, dtype=np.int32)
        self._static_gram = np.zeros((c, S, S), dtype=np.float32)
        self._taught = np.zeros(1, dtype=np.int64)
        self._scratch_weights = np.zeros(max(L, S), dtype=np.float32)
        self._scratch_logits = np.zeros(c, dtype=np.float32)

    # -- reading and adapting --------------------------------------------------------------------
    def prior_proba(self, features: np.ndarray) -> np.ndarray:
        """The prior classifier's probabilities alone, (n, classes) float32."""
        self._check_fitted()
        x = as_features(features, self.dim)
        return self._prior(x if self._stage is None else as_features(self._stage.transform(x)))

    def _prior(self, x: np.ndarray) -> np.ndarray:
        if isinstance(self._prior_head, Linear):  # x is validated and normalised already: skip doing it twice
            return softmax(self._prior_head.logits_of_normalised(x).astype(np.float32, copy=False))
        if self._prior_head is not None:
            return np.ascontiguousarray(self._prior_head.predict_proba(x), dtype=np.float32)
        return softmax((x @ self._text.T) * np.float32(self.prior_scale))

    def _run(self, features: np.ndarray, write: bool) -> np.ndarray:
        self._check_fitted()
        raw = as_features(features, self.dim)
        x = raw if self._stage is None else as_features(self._stage.transform(raw))
        out = np.empty((len(x), self._n_classes), dtype=np.float32)
        kernels.dmn_adapt(
            x,
            self._prior(x),
            self._ring,
            self._ring_entropy,
            self._ring_fill,
            self._ring_gram,
            self._static,
            self._static_fill,
            self._static_gram,
            self._anchors,
            np.float32(self.beta),
            np.float32(self.scale),
            np.float32(self.weight_dynamic),
            np.float32(self.weight_static),
            self._max_entropy(),
            bool(self.skip_own_slot),
            write,
            out,
            self._scratch_weights,
            self._scratch_logits,
        )
        if write and self._stage is not None:
            self._stage.update(raw, out)
        return out

    def _max_entropy(self) -> np.float32:
        # A gate of 1 admits everything, even a uniform prior whose float entropy rounds above log C.
        return np.float32(np.inf if self.write_gate >= 1.0 else self.write_gate * np.log(self._n_classes))

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self._run(features, write=False)

    def domain_statistics(self) -> dict[str, tuple[np.ndarray, float]]:
        """The shift stage's domain statistics (empty without the stage), for the bench's drift."""
        self._check_fitted()
        return {} if self._stage is None else self._stage.statistics()

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """Sample by sample: write into the pseudo-label's ring, read without the own slot, fuse.

        The returned row i is the prediction made for sample i when it arrived (online)."""
        return self._run(features, write=True)

    def c_export(self) -> dict[str, Any]:
        """What the C read-out classifies with: the feature shift (source - target mean, or None),
        the prior as (P, b or None, s) with probabilities softmax(s P x + b), both memories as
        (slots, fill per class), and the class anchors."""
        self._check_fitted()
        shift = None
        if self._stage is not None:  # FeatureShift.transform adds this float32 difference
            means = self._stage.arrays()
            shift = means["source_mean"] - means["target_mean"]
        head: Any = self._prior_head
        prior: tuple[np.ndarray, np.ndarray | None, float]
        if self.prior == "linear":
            prior = (np.asarray(head.weight, np.float32), np.asarray(head.bias, np.float32), 1.0)
        elif self.prior == "prototypes":
            table = head.c_export()
            prior = (table["prototypes"], None, table["inv_temperature"])
        else:
            prior = (np.asarray(self._text, np.float32), None, float(self.prior_scale))
        return {
            "shift": shift,
            "prior": prior,
            "dynamic": (self._ring, self._ring_fill),
            "static": (self._static, self._static_fill),
            "anchors": self._anchors,
        }

    def memory_usage(self) -> tuple[int, int | None] | None:
        """(occupied dynamic slots, memory_length x classes)."""
        return (int(self._ring_fill.sum()), int(self.memory_length) * self.n_classes) if self.fitted else None

    def teach(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Put labelled features in the static memory; a full class ring replaces its oldest slot."""
        self._check_fitted()
        x = as_features(features, self.dim)
        if self._stage is not None:
            x = as_features(self._stage.transform(x))
        self._teach_rows(x, as_labels(labels, len(x), self._n_classes))

    def _teach_rows(self, x: np.ndarray, y: np.ndarray) -> None:
        for row, label in zip(x, y):
            # The replacement rule keeps low entropies; recording minus the arrival count makes
            # every newer labelled sample "more certain" than every older one, i.e. first in, first out.
            self._taught[0] += 1
            kernels.ring_write(
                self._static,
                self._static_entropy,
                self._static_fill,
                self._static_gram,
                row,
                int(label),
                np.float32(-self._taught[0]),
            )

    def forget(self) -> int:
        """Empty the dynamic memory and the shift's target mean (e.g. the scene changed); returns the slots freed."""
        self._check_fitted()
        freed = int(self._ring_fill.sum())
        self._ring[:] = 0.0
        self._ring_entropy[:] = np.inf
        self._ring_fill[:] = 0
        self._ring_gram[:] = 0.0
        if self._stage is not None:  # the target mean restarts at the source mean, as after fit
            self._stage.reset()
        return freed

    def prepare(self) -> None:
        """Compile the kernels now (with a throwaway copy of the state), not on the first frame."""
        self._check_fitted()
        probe = DMN.from_state_dict(self.state_dict())
        probe.adapt(self._anchors[:1].copy())

    @property
    def memory_fill(self) -> np.ndarray:
        """Occupied dynamic slots per class."""
        self._check_fitted()
        return self._ring_fill.copy()

    # -- state ------------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "anchors": self._anchors,
            "ring": self._ring,
            "ring_entropy": self._ring_entropy,
            "ring_fill": self._ring_fill,
            "ring_gram": self._ring_gram,
            "static": self._static,
            "static_entropy": self._static_entropy,
            "static_fill": self._static_fill,
            "static_gram": self._static_gram,
            "taught": self._taught,
        }
        if self._prior_head is not None:
            arrays.update({f"prior.{k}": v for k, v in self._prior_head._arrays().items()})
        else:
            arrays["text"] = self._text
        if self._stage is not None:
            arrays.update({f"shift.{k}": v for k, v in self._stage.arrays().items()})
        return arrays

    def _load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._anchors = np.ascontiguousarray(arrays["anchors"], dtype=np.float32)
        self._n_classes, self._dim = self._anchors.shape
        self._allocate()
        for name in (
            "ring",
            "ring_entropy",
            "ring_fill",
            "ring_gram",
            "static",
            "static_entropy",
            "static_fill",
            "static_gram",
            "taught",
        ):
            target = getattr(self, f"_{name}")
            source = np.asarray(arrays[name])
            if source.shape != target.shape:
                raise InputError(f"DMN state array {name} has shape {source.shape}, expected {target.shape}")
            target[...] = source
        head = {"linear": Linear, "prototypes": NCM}.get(self.prior)
        self._stage = None
        if self.shift_momentum is not None:
            self._stage = FeatureShift(self.shift_momentum, balanced=self.shift_balanced)
            # Copies: the stage updates its target mean in place, and the state's arrays may be shared.
            self._stage.load_arrays(
                {k[len("shift.") :]: np.array(v) for k, v in arrays.items() if k.startswith("shift.")}
            )
        self._prior_head = None
        if head is None:
            self._text = np.ascontiguousarray(arrays["text"], dtype=np.float32)
        else:
            self._prior_head = head() if head is Linear else NCM(temperature=1.0 / self.prior_scale)
            self._prior_head._load_arrays({k[len("prior.") :]: v for k, v in arrays.items() if k.startswith("prior.")})
