"""How far to trust a prediction: calibrated probabilities, a set of likely classes with a
coverage guarantee, and "not recognised" for inputs unlike the training images.

numpy only (no torch), so that every consumer can use it: `Predictor`, `fmnist evaluate`, and the
server's onnxruntime workers. Everything here is fitted at the end of training on held-out
images the model did not train on (fmnist.train.calibration), and kept in model.json as `trust`:

    "trust": {
      "held_out": 5000,                       # images it was fitted on
      "temperature": 0.628,                   # logits / T before the softmax (Guo et al. 2017)
      "sets": {"score": "lac", "levels": [...], "thresholds": [...]},   # split conformal
      "ood": {"score": "entropy", "pass_rate": 0.95, "threshold": 0.825}
    }

The scores were chosen by measurement (benchmarks/calibration.py: the default recipe, 3 seeds,
5,000 held-out images; means on the test set). LAC sets covered 89.31 % at 90 % and 94.26 % at
95 %, mean sizes 0.93 and 1.02; with the top class forced in they covered 93.22 % at 90 % (the
model is right 93.2 % of the time), and APS (not randomised) covered 89.93 % and 95.13 % with
sets of 3.7 and 4.6 classes. A randomised score would give one image different sets on
different requests. The entropy of the calibrated probabilities separated scikit-learn's digits
from the test images with AUROC 0.993 (top probability 0.980), and did better than the top
probability on every drawn kind; energy and the max logit did better still (digits 0.997 and
0.995; drawn text 0.951 against entropy's 0.935) but need the logits beside the probabilities in
every consumer, the server's included; that is left for later.

A checkpoint without it (trained before it existed, or with no held-out images, like the
Quickstart recipe's) predicts with temperature 1 and has no sets and no threshold: `assess` then
gives `set` and `recognised` as None.

Usage (what the server does with a batch):

    trust = Trust.from_meta(meta, coverage=0.95)     # coverage None: the default, 90 %
    probs = trust.probabilities(logits)              # (N, C) calibrated; Predictor does this
    trust.assess(probs)  # [{"set": [6, 0], "recognised": True, "ood_score": 0.71}, ...]

`assess` needs only the calibrated probabilities (the chosen out-of-distribution score is
computed from them), so what `Predictor.predict_arrays` returns is enough.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmnist.errors import ConfigError

DEFAULT_COVERAGE = 0.90
DEFAULT_PASS_RATE = 0.95
# Coverage levels a checkpoint keeps a conformal threshold for: --coverage picks the first at or
# above the one asked for (so the guarantee still holds), between 50 % and 99.5 %.
LEVELS = tuple(round(0.5 + 0.005 * i, 3) for i in range(100))
SET_SCORES = ("lac", "aps")
OOD_SCORES = ("msp", "entropy")


# ---- calibration: one temperature ---------------------------------------------------------------


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(z)), np.asarray(labels)]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the NLL of `labels` under softmax(logits / T).

    The NLL is convex in 1/T, so it has one minimum: a golden-section search over log T in
    [1/20, 100] finds it to ~1e-6 in 60 steps (no optimiser library needed).
    """
    if len(logits) == 0:
        raise ValueError("no held-out images to fit a temperature on")
    lo, hi = math.log(0.05), math.log(100.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


# ---- prediction sets: split conformal ------------------------------------------------------------


def class_scores(probs: np.ndarray, score: str) -> np.ndarray:
    """Every class's non-conformity score (N, C): how unlike that class's answer it would be.
    A class is in the set when its score is at most the conformal threshold.

    - lac (least ambiguous set-valued classifier): 1 - p(class);
    - aps (adaptive prediction sets, not randomised): the probability of the classes ranked
      up to and including this one.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if score == "lac":
        return 1.0 - probs
    if score == "aps":
        order = np.argsort(-probs, axis=1, kind="stable")
        cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
        out = np.empty_like(probs)
        np.put_along_axis(out, order, cumulative, axis=1)
        return out
    raise ValueError(f"unknown set score {score!r}: choose from {', '.join(SET_SCORES)}")


def conformal_thresholds(
    probs: np.ndarray, labels: np.ndarray, score: str, levels: Sequence[float] = LEVELS
) -> list[float | None]:
    """For each coverage level, the split-conformal threshold from held-out images: the
    ceil((n + 1) * level)-th smallest true-class score. None where n is too small for the level
    (the set is then every class)."""
    true_scores = np.sort(class_scores(probs, score)[np.arange(len(labels)), np.asarray(labels)])
    n = len(true_scores)
    out: list[float | None] = []
    for level in levels:
        rank = math.ceil((n + 1) * level - 1e-9)
        out.append(float(true_scores[rank - 1]) if rank <= n else None)
    return out


def set_mask(probs: np.ndarray, score: str, threshold: float | None) -> np.ndarray:
    """(N, C) bool: the classes in each image's set. A set may be empty: no class is likely
    enough for the coverage asked (an input unlike the training images, or one of the rare
    ambiguous ones). Forcing the top class in would cover more than asked: with a model right
    93 % of the time, every 90 % set would then cover at least 93 %."""
    probs = np.asarray(probs)
    if threshold is None:
        return np.ones(probs.shape, dtype=bool)
    return class_scores(probs, score) <= threshold


# ---- out of distribution -------------------------------------------------------------------------


def ood_scores(probs: np.ndarray, score: str) -> np.ndarray:
    """(N,) how unlike the training images each input looks: higher is stranger.

    - msp: minus the top probability (Hendrycks & Gimpel 2017);
    - entropy: the entropy of the probabilities (nats).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if score == "msp":
        return -probs.max(axis=1)
    if score == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
    raise ValueError(f"unknown OOD score {score!r}: choose from {', '.join(OOD_SCORES)}")


def ood_threshold(scores: np.ndarray, pass_rate: float = DEFAULT_PASS_RATE) -> float:
    """The score at or below which `pass_rate` of the held-out (in-distribution) images fall."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    rank = max(1, math.ceil(len(s) * pass_rate - 1e-9))
    return float(s[min(rank, len(s)) - 1])


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """The probability that an out-of-distribution input scores higher than an
    in-distribution one (ties count half): 1.0 separates them perfectly, 0.5 is chance."""
    a = np.asarray(in_scores, dtype=np.float64)
    b = np.asarray(out_scores, dtype=np.float64)
    both = np.concatenate([a, b])
    order = both.argsort(kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    # average ranks over ties (Mann-Whitney U)
    values, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


# ---- what a checkpoint keeps, and what a prediction says -----------------------------------------


def fit(
    logits: np.ndarray, labels: np.ndarray, *, set_score: str = "lac", ood_score: str = "entropy",
    pass_rate: float = DEFAULT_PASS_RATE,
) -> dict[str, Any]:
    """model.json's `trust` from held-out images' logits (N, C) and labels (N,)."""
    labels = np.asarray(labels)
    temperature = fit_temperature(logits, labels)
    probs = softmax(logits, temperature)
    scores = ood_scores(probs, ood_score)
    return {
        "held_out": int(len(labels)),
        "temperature": temperature,
        "sets": {"score": set_score, "levels": list(LEVELS),
                 "thresholds": conformal_thresholds(probs, labels, set_score)},
        "ood": {"score": ood_score, "pass_rate": pass_rate,
                "threshold": ood_threshold(scores, pass_rate)},
    }


UNCALIBRATED = ("this model has no fitted temperature (trained before calibration, or without "
                "held-out images): probabilities as the model gives them (temperature 1), no "
                "prediction sets, no not-recognised mark.")

_said: set[str] = set()


def say_once(message: str) -> None:
    """A note on stderr, once per process (a server loads its model in every worker)."""
    if message not in _said:
        _said.add(message)
        print(f"fmnist: note: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Trust:
    """A checkpoint's calibration at one coverage level: what `assess` needs."""

    temperature: float = 1.0
    coverage: float = DEFAULT_COVERAGE
    set_score: str | None = None  # None: the checkpoint has no sets
    set_threshold: float | None = None  # None with a set_score: every class
    ood_score: str = "entropy"
    ood_threshold: float | None = None  # None: no threshold (recognised is None)

    @property
    def calibrated(self) -> bool:
        return self.set_score is not None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], coverage: float | None = None) -> Trust:
        """The trust a checkpoint's metadata (model.json) holds, at `coverage` (default 90 %).
        A checkpoint without any: temperature 1, no sets, no threshold."""
        coverage = check_coverage(DEFAULT_COVERAGE if coverage is None else coverage)
        fitted = meta.get("trust")
        if not isinstance(fitted, dict):
            return cls(coverage=coverage)
        sets, ood = fitted.get("sets") or {}, fitted.get("ood") or {}
        levels, thresholds = list(sets.get("levels", [])), list(sets.get("thresholds", []))
        # the first kept level at or above the one asked for: its guarantee covers the request
        at = next((i for i, level in enumerate(levels) if level >= coverage - 1e-9), None)
        return cls(
            temperature=float(fitted.get("temperature", 1.0)),
            coverage=coverage,
            set_score=sets.get("score"),
            set_threshold=None if at is None else thresholds[at],
            ood_score=str(ood.get("score", "entropy")),
            ood_threshold=ood.get("threshold"),
        )

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, C), float32, from the model's logits."""
        return softmax(logits, self.temperature).astype(np.float32)

    def sets(self, probs: np.ndarray) -> np.ndarray | None:
        """(N, C) bool set membership, or None when the checkpoint has no sets."""
        if self.set_score is None:
            return None
        return set_mask(probs, self.set_score, self.set_threshold)

    def assess(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """Per image (rows of calibrated probabilities): {"set": class indices, most probable
        first (maybe none), or None without sets; "recognised": bool, or None without a
        threshold; "ood_score": float, higher is stranger}."""
        probs = np.asarray(probs)
        masks = self.sets(probs)
        scores = ood_scores(probs, self.ood_score)
        out = []
        for i, row in enumerate(probs):
            members = None
            if masks is not None:
                ranked = np.argsort(-row, kind="stable")
                members = [int(c) for c in ranked if masks[i, c]]
            recognised = None if self.ood_threshold is None else bool(scores[i] <= self.ood_threshold)
            out.append({"set": members, "recognised": recognised, "ood_score": float(scores[i])})
        return out


def check_coverage(coverage: float) -> float:
    """`coverage` if a checkpoint can give it, else one sentence saying what can."""
    if not LEVELS[0] <= coverage <= LEVELS[-1]:
        raise ConfigError(
            f"Coverage must be between {LEVELS[0]} and {LEVELS[-1]} (a fraction: 0.9 is 90 %), "
            f"got {coverage}."
        )
    return float(coverage)
