"""Adaptation tasks: a labelled source domain and an unlabelled target stream, from cached features.

Task names (``SHIFTED_TASKS`` + ``CONTROL``):

- cross-domain: ``photo->clipart``, ``photo->emoji``, ``clipart->photo``, ``mnist->uci-digits``
  (one fold: the whole source domain, the whole target domain);
- corruptions: ``photo->photo-c/<corruption>`` for the 10 bench corruptions (severity 5);
- control: ``photo->photo`` (no shift).

Corruption and control tasks split the photos into two stratified halves with a fixed seed
(``SPLIT_SEED``). Fold 0: clean half A is the source, the (corrupted) images of half B are the
target; fold 1 the reverse. A target image's clean copy is therefore never in the source (that
would leak: a linear head recognises its own training image under noise). Results are averaged
over the two folds.

``DEV_TASKS`` use the same protocol on corruptions that are *not* reported (ImageNet-C's own
held-out validation corruptions and two more): every method's defaults are chosen on these and on source data,
never on the reported targets.

Stream orders (``ORDERS``), each seeded: ``iid`` shuffles the target; ``dirichlet`` and ``runs``
look like a camera, where one object stays in view for many frames and classes come and go:

- ``dirichlet``: RoTTA's temporally correlated, class-imbalanced order (Yuan et al., CVPR 2023,
  after NOTE's): the stream is cut into as many time slots as there are classes, each class's
  frames are spread over the slots by a draw from Dirichlet(``concentration``), and within a slot
  the classes' chunks follow each other in a random order. With the default 0.1 most classes
  arrive in one or two long blocks.
- ``runs``: runs of one class, each of a geometric length with mean ``mean_run`` (20) frames,
  like an object held in view; the next run's class is drawn in proportion to the frames each
  class has left (never the class just shown while another remains).

Camera orders (``CAMERA_ORDERS``), streams of ``STREAM_FRAMES`` (5,000) frames whatever the
task's size, where a class stays in view for minutes:

- ``dwell``: stays of one class whose lengths have a mean of ~250 frames and a long tail: 5% of
  stays last 1,500-2,500 frames, the rest are log-normal (mean 158, sigma 1); every stream has at
  least one stay of 1,500+ frames. The next stay's class is drawn in proportion to the target's
  class frequencies, never the class just shown.
- ``dirichlet-long``: RoTTA's Dirichlet order (concentration 0.1) with slots of ``SLOT_FRAMES``
  (250) frames: 20 slots over 5,000 frames, each class's share of the stream (its frequency in
  the target) spread over them by Dirichlet(0.1).

A task has a few hundred target frames (a photo half: ~107), so the camera orders draw frames
**with replacement** within a stay, as a camera's frames repeat: each class's frames are dealt
from a shuffled deck that is reshuffled when it runs out, so a frame comes back only after every
frame of its class has been shown. Accuracy is the fraction of the stream's frames right
(repeated frames count each time they are shown). Unlike the permutation orders, their labels'
histogram is the order's, not the target's.

Target labels travel with a fold only for scoring and for ordering the stream; the accuracy
runner hands an adapter one feature row at a time and nothing else (see
``edge_runtime.bench.accuracy.run_stream``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_runtime.adapters.linear import stratified_folds

# The reported corruptions and the held-out dev ones (ImageNet-C's validation four plus zoom blur
# and elastic transform) are defined with the corrupted datasets.
from edge_runtime.bench.datasets.corruptions import CORRUPTIONS as BENCH_CORRUPTIONS
from edge_runtime.bench.datasets.corruptions import DEV_CORRUPTIONS
from edge_runtime.errors import InputError

CROSS_DOMAIN = (("photo", "clipart"), ("photo", "emoji"), ("clipart", "photo"), ("mnist", "uci-digits"))

CONTROL = "photo->photo"
DIGITS_CONTROL = "mnist->mnist"  # the 10,000 mnist digits in two stratified halves, each streamed against the other
CONTROLS = (CONTROL, DIGITS_CONTROL)
SHIFTED_TASKS = tuple(f"{s}->{t}" for s, t in CROSS_DOMAIN) + tuple(f"photo->photo-c/{c}" for c in BENCH_CORRUPTIONS)
BENCH_TASKS = SHIFTED_TASKS + CONTROLS
DEV_TASKS = tuple(f"photo->photo-c/{c}" for c in DEV_CORRUPTIONS)
QUICK_TASKS = ("photo->clipart", "mnist->uci-digits", "photo->photo-c/gaussian_noise", CONTROL)

SPLIT_SEED = 0  # the photo halves; fixed so every method and every run sees the same folds
ORDER_SEEDS = (0, 1, 2)  # the three stream orders of each kind
ORDERS = ("iid", "dirichlet", "runs")  # permutations of the target rows
CAMERA_ORDERS = ("dwell", "dirichlet-long")  # long streams, frames drawn with replacement within a stay
ALL_ORDERS = ORDERS + CAMERA_ORDERS
DIRICHLET_CONCENTRATION = 0.1
MEAN_RUN = 20
STREAM_FRAMES = 5000  # length of a camera-order stream
QUICK_STREAM_FRAMES = 1500  # ... in --quick runs
MEAN_STAY = 250.0  # dwell: mean stay length (frames)
LONG_STAY = (1500, 2500)  # dwell: the long tail's stays, uniform in this range
LONG_STAY_SHARE = 0.05  # dwell: share of stays drawn from the long tail
SLOT_FRAMES = 250  # dirichlet-long: frames per slot


def iid_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded shuffle of the rows (labels only give the length)."""
    return np.random.default_rng([seed, len(labels)]).permutation(len(labels))


def _class_queues(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)]


def dirichlet_order(labels: np.ndarray, seed: int, concentration: float = DIRICHLET_CONCENTRATION) -> np.ndarray:
    """RoTTA's temporally correlated order (see the module docstring): a permutation of the rows.

    >>> order = dirichlet_order(np.repeat(np.arange(3), 10), seed=0)
    >>> sorted(order.tolist()) == list(range(30))
    True
    """
    if concentration <= 0:
        raise InputError(f"the Dirichlet concentration must be > 0, got {concentration}")
    rng = np.random.default_rng([seed, len(labels), 1])
    queues = _class_queues(labels, rng)
    n_slots = len(queues)
    slots: list[list[np.ndarray]] = [[] for _ in range(n_slots)]
    for rows, share in zip(queues, rng.dirichlet(np.full(n_slots, concentration), size=len(queues))):
        cuts = (np.cumsum(share)[:-1] * len(rows)).astype(np.int64)
        for slot, chunk in zip(slots, np.split(rows, cuts)):
            slot.append(chunk)
    return np.concatenate([chunk for slot in slots for chunk in (slot[i] for i in rng.permutation(len(slot)))])


def runs_order(labels: np.ndarray, seed: int, mean_run: float = MEAN_RUN) -> np.ndarray:
    """Runs of one class of geometric length, mean ``mean_run`` frames (see the module docstring).

    >>> order = runs_order(np.repeat(np.arange(3), 10), seed=0, mean_run=5)
    >>> sorted(order.tolist()) == list(range(30))
    True
    """
    if mean_run < 1:
        raise InputError(f"the mean run length must be >= 1 frame, got {mean_run}")
    rng = np.random.default_rng([seed, len(labels), 2])
    queues = _class_queues(labels, rng)
    left = np.array([len(q) for q in queues], np.float64)
    taken = np.zeros(len(queues), np.int64)
    out, previous = [], -1
    while left.sum() > 0:
        weight = left.copy()
        if previous >= 0 and weight.sum() > weight[previous]:
            weight[previous] = 0.0
        k = int(rng.choice(len(queues), p=weight / weight.sum()))
        n = min(int(rng.geometric(1.0 / mean_run)), int(left[k]))
        out.append(queues[k][taken[k] : taken[k] + n])
        taken[k] += n
        left[k] -= n
        previous = k
    return np.concatenate(out)


class _Decks:
    """Each class's rows dealt from a shuffled deck, reshuffled when it runs out: draws with
    replacement that show every frame of a class before any comes back."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator) -> None:
        self.classes = np.unique(labels)
        self.rows = [np.flatnonzero(labels == k) for k in self.classes]
        self.rng = rng
        self.decks = [rng.permutation(r) for r in self.rows]

    def deal(self, c: int, n: int) -> np.ndarray:
        """``n`` rows of the c-th class (index into ``classes``)."""
        out = []
        while n > 0:
            if not len(self.decks[c]):
                self.decks[c] = self.rng.permutation(self.rows[c])
            take = self.decks[c][:n]
            self.decks[c] = self.decks[c][n:]
            out.append(take)
            n -= len(take)
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def stay_lengths(seed: int, frames: int) -> np.ndarray:
    """The dwell order's stay lengths (they sum to ``frames``; the last is cut to fit): 5% from
    the long tail (uniform 1,500-2,500), the rest log-normal with mean 158 and sigma 1 (overall
    mean ~250); at least one stay of the long tail when the stream is long enough to hold it.

    >>> lengths = stay_lengths(0, 5000)
    >>> int(lengths.sum()), bool(lengths.max() >= 1500)
    (5000, True)
    """
    rng = np.random.default_rng([seed, frames, 3])
    short_mean = (MEAN_STAY - LONG_STAY_SHARE * np.mean(LONG_STAY)) / (1 - LONG_STAY_SHARE)
    sigma = 1.0
    lengths: list[int] = []
    while sum(lengths) < frames:
        if rng.random() < LONG_STAY_SHARE:
            lengths.append(int(rng.integers(LONG_STAY[0], LONG_STAY[1] + 1)))
        else:
            lengths.append(max(1, int(round(rng.lognormal(np.log(short_mean) - sigma**2 / 2, sigma)))))
    if max(lengths) < LONG_STAY[0] and frames >= 2 * LONG_STAY[0]:
        i = int(rng.integers(len(lengths) // 2 + 1))  # somewhere in the first half
        lengths[i] = int(rng.integers(LONG_STAY[0], LONG_STAY[1] + 1))
    out = np.array(lengths, np.int64)
    ends = np.cumsum(out)
    last = int(np.searchsorted(ends, frames))  # the stay in which the stream ends
    out = out[: last + 1]
    out[-1] -= int(ends[last] - frames)
    return out


def dwell_order(labels: np.ndarray, seed: int, frames: int = STREAM_FRAMES) -> np.ndarray:
    """Stays of one class (``stay_lengths``), frames with replacement within a stay (see the
    module docstring): ``frames`` row indices, rows repeat.

    >>> labels = np.repeat(np.arange(3), 10)
    >>> order = dwell_order(labels, seed=0, frames=4000)
    >>> len(order), bool((np.diff(labels[order]) != 0).sum() < 40)
    (4000, True)
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, len(labels), 4])
    decks = _Decks(labels, rng)
    freq = np.array([len(r) for r in decks.rows], np.float64)
    out, previous = [], -1
    for n in stay_lengths(seed, frames):
        weight = freq.copy()
        if previous >= 0 and len(weight) > 1:
            weight[previous] = 0.0
        c = int(rng.choice(len(weight), p=weight / weight.sum()))
        out.append(decks.deal(c, int(n)))
        previous = c
    return np.concatenate(out)


def dirichlet_long_order(
    labels: np.ndarray,
    seed: int,
    frames: int = STREAM_FRAMES,
    slot: int = SLOT_FRAMES,
    concentration: float = DIRICHLET_CONCENTRATION,
) -> np.ndarray:
    """RoTTA's Dirichlet order with slots of ``slot`` frames over ``frames`` frames, drawn with
    replacement within a class (see the module docstring): ``frames`` row indices.

    >>> labels = np.repeat(np.arange(3), 10)
    >>> order = dirichlet_long_order(labels, seed=0, frames=3000)
    >>> len(order), np.bincount(labels[order]).tolist()
    (3000, [1000, 1000, 1000])
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, len(labels), 5])
    decks = _Decks(labels, rng)
    freq = np.array([len(r) for r in decks.rows], np.float64)
    # each class's frames: its share of the stream (largest remainders, so they sum to frames)
    exact = frames * freq / freq.sum()
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: frames - counts.sum()]] += 1
    n_slots = max(1, frames // slot)
    chunks: list[list[tuple[int, int]]] = [[] for _ in range(n_slots)]
    for c, share in enumerate(rng.dirichlet(np.full(n_slots, concentration), size=len(counts))):
        cuts = np.diff(np.concatenate([[0], (np.cumsum(share)[:-1] * counts[c]).astype(np.int64), [counts[c]]]))
        for s, n in enumerate(cuts):
            if n > 0:
                chunks[s].append((c, int(n)))
    out = [
        decks.deal(c, n)
        for slot_chunks in chunks
        for c, n in (slot_chunks[i] for i in rng.permutation(len(slot_chunks)))
    ]
    return np.concatenate(out)


_ORDER_MAKERS = {
    "iid": iid_order,
    "dirichlet": dirichlet_order,
    "runs": runs_order,
    "dwell": dwell_order,
    "dirichlet-long": dirichlet_long_order,
}


def stream_order(labels: np.ndarray, seed: int, kind: str = "iid", frames: int | None = None) -> np.ndarray:
    """The stream order ``kind`` (one of ``ALL_ORDERS``) seeded by ``seed``: a permutation of the
    rows (``ORDERS``), or ``frames`` (default ``STREAM_FRAMES``) row indices drawn with
    replacement within each stay (``CAMERA_ORDERS``)."""
    try:
        make = _ORDER_MAKERS[kind]
    except KeyError:
        raise InputError(f"unknown stream order {kind!r}; known: {', '.join(ALL_ORDERS)}") from None
    if kind in CAMERA_ORDERS:
        return make(np.asarray(labels), seed, STREAM_FRAMES if frames is None else int(frames))
    return make(np.asarray(labels), seed)


def order_profile(labels: np.ndarray, order: np.ndarray) -> dict[str, float]:
    """What a stream looks like: its stays (maximal runs of one class) and how often frames repeat."""
    y = np.asarray(labels)[order]
    change = np.flatnonzero(np.diff(y) != 0)
    stays = np.diff(np.concatenate([[0], change + 1, [len(y)]]))
    return {
        "frames": int(len(y)),
        "stays": int(len(stays)),
        "mean_stay": float(stays.mean()),
        "longest_stay": int(stays.max()),
        "stays_1500": int((stays >= 1500).sum()),
        "shows_per_frame": float(len(y) / max(len(np.unique(order)), 1)),
    }


@dataclass(frozen=True)
class Fold:
    """One source/target pairing. ``source_key`` names the source rows (same key, same rows), so
    a runner may fit once per method and source."""

    source_key: str
    source_x: np.ndarray
    source_y: np.ndarray
    source_ids: tuple[str, ...]
    target_x: np.ndarray
    target_y: np.ndarray  # for scoring only
    target_ids: tuple[str, ...]

    def order(self, order_seed: int, kind: str = "iid", frames: int | None = None) -> np.ndarray:
        """The target rows' stream order ``kind`` seeded by ``order_seed`` (row indices; see
        ``stream_order``)."""
        return stream_order(self.target_y, order_seed, kind, frames)


@dataclass(frozen=True)
class Task:
    name: str
    group: str  # "shifted", "control" or "dev"
    classes: tuple[str, ...]
    folds: tuple[Fold, ...]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def group_of(name: str) -> str:
    if name in CONTROLS:
        return "control"
    if name in DEV_TASKS:
        return "dev"
    if name in SHIFTED_TASKS:
        return "shifted"
    raise InputError(f"unknown task {name!r}; known: {', '.join(BENCH_TASKS + DEV_TASKS)}")


def _align(features, classes: tuple[str, ...], domain: str) -> np.ndarray:
    """Labels of ``features`` re-indexed into ``classes`` (the source's class order)."""
    if tuple(features.classes) == classes:
        return np.asarray(features.y, np.int64)
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(features.classes) - set(index))
    if missing:
        raise InputError(f"domain {domain!r} has classes {missing} that the source does not know")
    remap = np.array([index[c] for c in features.classes], np.int64)
    return remap[np.asarray(features.y, np.int64)]


def photo_halves(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the two stratified halves of the photos (fixed seed)."""
    fold = stratified_folds(y, 2, SPLIT_SEED)
    return np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)


def load_task(name: str, model_path=None) -> Task:
    """Build task ``name`` from the cached features of ``model_path`` (default backbone if None)."""
    from edge_runtime.bench.features import load_features

    group = group_of(name)
    source_name, target_name = name.split("->")
    source = load_features(source_name, model_path=model_path)
    classes = tuple(source.classes)
    sx, sy, sid = np.asarray(source.X, np.float32), np.asarray(source.y, np.int64), tuple(source.ids)
    if source_name == target_name != "photo":  # a no-shift control: the domain's two halves
        folds = []
        for k, (src, tgt) in enumerate((photo_halves(sy), photo_halves(sy)[::-1])):
            folds.append(
                Fold(
                    f"{source_name}[half {k} of 2, seed {SPLIT_SEED}]",
                    sx[src],
                    sy[src],
                    pick(sid, src),
                    sx[tgt],
                    sy[tgt],
                    pick(sid, tgt),
                )
            )
        return Task(name, group, classes, tuple(folds))
    if source_name != "photo" or not target_name.startswith("photo"):
        target = load_features(target_name, model_path=model_path)
        fold = Fold(
            source_name,
            sx,
            sy,
            sid,
            np.asarray(target.X, np.float32),
            _align(target, classes, target_name),
            tuple(target.ids),
        )
        return Task(name, group, classes, (fold,))
    # Two-fold photo protocol: clean half A -> (corrupted) half B, and B -> A.
    if target_name == "photo":
        tx, ty = sx, sy
    else:
        corrupted = load_features(target_name, model_path=model_path)
        position = {image_id: i for i, image_id in enumerate(corrupted.ids)}
        missing = [i for i in source.ids if i not in position]
        if missing:
            raise InputError(
                f"{target_name} lacks {len(missing)} photo ids (e.g. {missing[0]!r}); " "rebuild its features cache"
            )
        rows = np.array([position[i] for i in source.ids])  # corrupted row of each clean photo
        tx = np.asarray(corrupted.X, np.float32)[rows]
        ty = _align(corrupted, classes, target_name)[rows]
        if not np.array_equal(ty, sy):
            raise InputError(f"{target_name} labels disagree with the clean photos for the same ids")
    folds = []
    for k, (src, tgt) in enumerate((photo_halves(sy), photo_halves(sy)[::-1])):
        folds.append(
            Fold(
                f"photo[half {k} of 2, seed {SPLIT_SEED}]",
                sx[src],
                sy[src],
                pick(sid, src),
                tx[tgt],
                ty[tgt],
                pick(sid, tgt),
            )
        )
    return Task(name, group, classes, tuple(folds))


def pick(ids: tuple[str, ...], rows: np.ndarray) -> tuple[str, ...]:
    return tuple(ids[i] for i in rows)


def subsample(task: Task, max_target: int, max_source_per_class: int | None = None, seed: int = 0) -> Task:
    """A smaller task for quick runs: at most ``max_target`` target rows per fold (stratified)
    and at most ``max_source_per_class`` source rows per class.

    The source rows drawn depend only on the source rows and ``seed``, so folds that share a
    ``source_key`` still share their (subsampled) source.
    """

    def keep(y: np.ndarray, fraction: float | None, per_class: int | None, rng: np.random.Generator) -> np.ndarray:
        rows = []
        for label in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == label))
            n = len(members) if fraction is None else max(1, round(fraction * len(members)))
            rows.append(members[: n if per_class is None else min(n, per_class)])
        return np.sort(np.concatenate(rows))

    folds = []
    for fold in task.folds:
        s = keep(fold.source_y, None, max_source_per_class, np.random.default_rng([seed, 0]))
        t = keep(fold.target_y, min(1.0, max_target / len(fold.target_y)), None, np.random.default_rng([seed, 1]))
        folds.append(
            Fold(
                f"{fold.source_key}[sub {max_source_per_class}, seed {seed}]",
                fold.source_x[s],
                fold.source_y[s],
                pick(fold.source_ids, s),
                fold.target_x[t],
                fold.target_y[t],
                pick(fold.target_ids, t),
            )
        )
    return Task(task.name, task.group, task.classes, tuple(folds))
