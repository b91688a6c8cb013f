"""River's HalfSpaceTrees on numpy arrays: the same trees, scores and windows, faster.

River keeps each tree as a graph of node objects and walks it per tree in Python; its window
swap visits every node, and pickling the graph costs a class path per node. Here the trees
are arrays in heap order (node ``i`` has children ``2i+1`` and ``2i+2``), all trees step one
level at a time together, the window swap exchanges two arrays, and the pickled state is a
few byte strings.

Equivalence with River (``tests/test_trees.py`` holds River as the oracle, score for score
and mass for mass): the trees are grown as River grows them at its first ``learn_one``, with
the same random calls in the same order (River's algorithm, written here for arrays: nothing
of River is imported); River accumulates each score as a float sum of integers below 2**53,
which is exact, so the integer sum here gives the same float. One restriction: every event
carries every feature, as a vector in the order of ``features`` (River also takes events with
missing features; the detector never sends any).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# River's HalfSpaceTrees.learn_one grows its trees with this padding of the split range.
_RIVER_PADDING = 0.15

Indices = npt.NDArray[np.intp]


class HalfSpaceTrees:
    """River's ``anomaly.HalfSpaceTrees`` over a fixed feature vector, on arrays.

    Parameters are River's; ``features`` names the vector's positions (River picks split
    features among them in sorted order, weighted by their ranges). The trees are built at
    construction, with the random calls River makes at its first ``learn_one``.

    Examples:
        River's own example, with River's figures:

        >>> X = [0.5, 0.45, 0.43, 0.44, 0.445, 0.45, 0.0]
        >>> t = HalfSpaceTrees(("x",), n_trees=5, height=3, window_size=3, seed=42)
        >>> for v in X[:3]:
        ...     t.learn_one([v])
        >>> for v in X:
        ...     t.learn_one([v])
        ...     print(f"{t.score_one([v]):.3f}", end=" ")
        0.107 0.071 0.107 0.107 0.107 0.071 0.853
    """

    def __init__(
        self,
        features: Sequence[str],
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        limits: Mapping[str, tuple[float, float]] | None = None,
        seed: int | None = None,
    ) -> None:
        bounds = dict.fromkeys(features, (0.0, 1.0)) | dict(limits or {})
        rng = random.Random(seed)  # noqa: S311 - River's seeded split choice, not security
        n_nodes = 2 ** (height + 1) - 1
        position = {f: i for i, f in enumerate(features)}
        feature = np.zeros((n_trees, n_nodes), np.intp)  # leaves keep 0: one index for all
        threshold = np.zeros((n_trees, n_nodes))
        for t in range(n_trees):
            # River: limits={i: self.limits[i] for i in sorted(x)}, one tree after the other.
            limits_t = {f: bounds[f] for f in sorted(features)}
            _grow(feature[t], threshold[t], 0, height, limits_t, position, rng)
        mass = np.zeros((n_trees, n_nodes), np.min_scalar_type(window_size))
        self._set(tuple(features), height, window_size, 0, True, feature, threshold, mass, mass)

    @classmethod
    def from_river(cls, hst: Any, features: Sequence[str]) -> HalfSpaceTrees:
        """The same model as River's ``hst`` (trees, masses, window position) on arrays (the
        tests' oracle; its nodes are read by their attributes: a branch has ``children``)."""
        if not hst.trees:  # River builds at its first learn_one; its rng is still unused
            return cls(features, hst.n_trees, hst.height, hst.window_size, hst.limits, hst.seed)
        self = cls.__new__(cls)
        self._load(
            tuple(features), hst.height, hst.window_size, hst.trees, hst.counter,
            hst._first_window,
        )  # fmt: skip
        return self

    def _load(
        self,
        features: tuple[str, ...],
        height: int,
        window_size: int,
        trees: Sequence[Any],
        counter: int,
        first_window: bool,
    ) -> None:
        """Read River's node graphs into heap-ordered arrays (:meth:`from_river`)."""
        n_nodes = 2 ** (height + 1) - 1
        n = len(trees)
        feature = np.zeros((n, n_nodes), np.intp)  # leaves keep 0: one index for all arrays
        threshold = np.zeros((n, n_nodes))
        l_mass = np.zeros((n, n_nodes), np.min_scalar_type(window_size))
        r_mass = np.zeros_like(l_mass)
        position = {f: i for i, f in enumerate(features)}
        for t, root in enumerate(trees):
            stack = [(root, 0)]
            while stack:
                node, i = stack.pop()
                l_mass[t, i], r_mass[t, i] = node.l_mass, node.r_mass
                if hasattr(node, "children"):
                    feature[t, i], threshold[t, i] = position[node.feature], node.threshold
                    stack += [(node.children[0], 2 * i + 1), (node.children[1], 2 * i + 2)]
        self._set(features, height, window_size, counter, first_window, feature, threshold,
                  l_mass, r_mass)  # fmt: skip

    def _set(
        self,
        features: tuple[str, ...],
        height: int,
        window_size: int,
        counter: int,
        first_window: bool,
        feature: npt.NDArray[np.intp],
        threshold: npt.NDArray[np.float64],
        l_mass: npt.NDArray[Any],
        r_mass: npt.NDArray[Any],
    ) -> None:
        """The model from its [tree, node] arrays (copied flat)."""
        self.features = features
        self.height = height
        self.window_size = window_size
        self.counter = counter
        self.first_window = first_window
        self._feature = feature.ravel()
        self._threshold = threshold.ravel()
        self._l_mass = l_mass.flatten()
        self._r_mass = r_mass.flatten()
        self._prepare(*feature.shape)

    def _prepare(self, n_trees: int, n_nodes: int) -> None:
        """Derived constants and the path cache (not pickled)."""
        self.n_trees = n_trees
        self._n_nodes = n_nodes
        self._roots: Indices = np.arange(n_trees, dtype=np.intp) * n_nodes
        # Node g = root + i has its right child at root + 2i + 2, its left one just before.
        nodes = np.arange(n_trees * n_nodes, dtype=np.intp)
        self._right: Indices = 2 * nodes + 2 - np.repeat(self._roots, n_nodes)
        self._weights = 2 ** np.arange(self.height + 1, dtype=np.int64)
        # River stops after a mass below 0.1 * window_size; masses are integers, so comparing
        # with the ceiling as a mass-typed scalar is the same test, without a float cast.
        self._size_limit = self._l_mass.dtype.type(math.ceil(0.1 * self.window_size))
        self._keep = np.ones((self.height + 1, n_trees), np.bool_)  # row 0: roots always count
        self._max_score = n_trees * self.window_size * n_nodes  # River's _max_score
        self._last: tuple[list[float], Indices] | None = None

    def _path(self, x: Sequence[float]) -> Indices:
        """Node indices [height + 1, n_trees] of x's root-to-leaf path in every tree.

        The path depends on x and the splits only, so score_one and learn_one of the same x
        (the pipeline's order) share one walk.
        """
        xs = list(x)
        if self._last is not None and self._last[0] == xs:
            return self._last[1]
        values = np.array(xs, dtype=np.float64)
        path = np.empty((self.height + 1, self.n_trees), np.intp)
        g = path[0] = self._roots
        feature, threshold, right = self._feature, self._threshold, self._right
        for depth in range(1, self.height + 1):
            # River: left if value < threshold, else right (NaN goes right too).
            g = path[depth] = right[g] - (values[feature[g]] < threshold[g])
        self._last = xs, path
        return path

    def score_one(self, x: Sequence[float]) -> float:
        """River's score in [0, 1] (high = anomalous); 0 until the first window is complete."""
        if self.first_window:
            return 0.0
        r = self._r_mass[self._path(x)]
        # A node counts if every node above it on the path reached the size limit.
        keep = self._keep
        np.logical_and.accumulate(r[:-1] >= self._size_limit, axis=0, out=keep[1:])
        score = int(np.einsum("d,dt,dt->", self._weights, r, keep))
        return 1 - float(score) / self._max_score

    def learn_one(self, x: Sequence[float]) -> None:
        self._l_mass[self._path(x)] += 1  # one node per tree and level: no repeated index
        self.counter += 1
        if self.counter == self.window_size:
            self._r_mass, self._l_mass = self._l_mass, self._r_mass
            self._l_mass.fill(0)
            self.first_window = False
            self.counter = 0

    def __getstate__(self) -> dict[str, Any]:
        # Plain values and bytes: no class path per node; leaves have no split to store.
        internal = 2**self.height - 1
        splits = (self.n_trees, self._n_nodes)
        index = np.min_scalar_type(len(self.features))
        return {
            "features": self.features,
            "height": self.height,
            "window_size": self.window_size,
            "counter": self.counter,
            "first_window": self.first_window,
            "n_trees": self.n_trees,
            "index_dtype": index.str,
            "feature": self._feature.reshape(splits)[:, :internal].astype(index).tobytes(),
            "threshold": self._threshold.reshape(splits)[:, :internal].tobytes(),
            "mass_dtype": self._l_mass.dtype.str,
            "l_mass": self._l_mass.tobytes(),
            "r_mass": self._r_mass.tobytes(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        n_trees, height = state["n_trees"], state["height"]
        n_nodes, internal = 2 ** (height + 1) - 1, 2**height - 1
        self.features = tuple(state["features"])
        self.height = height
        self.window_size = state["window_size"]
        self.counter = state["counter"]
        self.first_window = state["first_window"]
        feature = np.zeros((n_trees, n_nodes), np.intp)
        feature[:, :internal] = np.frombuffer(state["feature"], state["index_dtype"]).reshape(
            n_trees, -1
        )
        threshold = np.zeros((n_trees, n_nodes))
        threshold[:, :internal] = np.frombuffer(state["threshold"]).reshape(n_trees, -1)
        self._feature, self._threshold = feature.ravel(), threshold.ravel()
        mass = np.dtype(state["mass_dtype"])
        self._l_mass = np.frombuffer(state["l_mass"], mass).copy()
        self._r_mass = np.frombuffer(state["r_mass"], mass).copy()
        self._prepare(n_trees, n_nodes)


def _grow(
    feature: npt.NDArray[np.intp],
    threshold: npt.NDArray[np.float64],
    i: int,
    height: int,
    limits: dict[str, tuple[float, float]],
    position: Mapping[str, int],
    rng: random.Random,
) -> None:
    """Node ``i`` of one tree and its subtrees, in heap order, with River's random calls in
    River's order (``river.tree.padded.make_padded_tree``: the split feature drawn weighted by
    the width of its limits, the split point uniform within the padded limits, then the left
    subtree, then the right one)."""
    if height == 0:
        return
    on = rng.choices(population=list(limits), weights=[hi - lo for lo, hi in limits.values()])[0]
    a, b = limits[on]
    at = rng.uniform(a + _RIVER_PADDING * (b - a), b - _RIVER_PADDING * (b - a))
    feature[i], threshold[i] = position[on], at
    limits[on] = (a, at)
    _grow(feature, threshold, 2 * i + 1, height - 1, limits, position, rng)
    limits[on] = (at, b)
    _grow(feature, threshold, 2 * i + 2, height - 1, limits, position, rng)
    limits[on] = (a, b)
