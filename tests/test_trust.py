"""fmnist.trust on synthetic logits and probabilities made here: the temperature, split-conformal
sets, the not-recognised threshold, and what a checkpoint without any of them gives."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist import trust
from fmnist.errors import ConfigError
from fmnist.trust import Trust


def overconfident(n: int, seed: int, classes: int = 10, scale: float = 6.0):
    """Logits of a model right ~70 % of the time but ~99 % sure: labels drawn from a softmax of
    mild logits, the model answering with those logits times `scale`."""
    rng = np.random.default_rng(seed)
    mild = rng.normal(0, 1.3, (n, classes))
    mild[np.arange(n), rng.integers(0, classes, n)] += 2.5
    p = trust.softmax(mild)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return mild * scale, labels


def test_the_fitted_temperature_lowers_the_nll_of_an_overconfident_model_to_its_minimum():
    logits, labels = overconfident(3000, 0)
    t = trust.fit_temperature(logits, labels)
    assert t == pytest.approx(6.0, rel=0.1)  # the model's own overconfidence
    grid = np.exp(np.linspace(np.log(0.1), np.log(50), 2001))
    best = grid[np.argmin([trust.nll(logits, labels, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.01)
    assert trust.nll(logits, labels, t) < 0.5 * trust.nll(logits, labels, 1.0)
    # and an under-confident one gets T < 1
    t_under = trust.fit_temperature(logits / 12, labels)
    assert t_under == pytest.approx(0.5, rel=0.1)


def calibrated_model(n: int, seed: int, classes: int = 10):
    """Probabilities and labels drawn from them: what a split-conformal test needs."""
    rng = np.random.default_rng(seed)
    probs = trust.softmax(rng.normal(0, 2.0, (n, classes)))
    labels = (probs.cumsum(1) > rng.random((n, 1))).argmax(1)
    return probs, labels


@pytest.mark.parametrize("score", trust.SET_SCORES)
@pytest.mark.parametrize("level", [0.8, 0.95])
def test_conformal_sets_cover_the_true_class_at_the_level_asked(score, level):
    cal_p, cal_y = calibrated_model(3000, 1)
    test_p, test_y = calibrated_model(30000, 2)
    (threshold,) = trust.conformal_thresholds(cal_p, cal_y, score, [level])
    mask = trust.set_mask(test_p, score, threshold)
    coverage = mask[np.arange(len(test_y)), test_y].mean()
    # the guarantee: at least `level` (up to sampling noise); LAC's sets no more than that
    # (APS without randomisation covers more)
    assert coverage >= level - 0.01
    if score == "lac":
        assert coverage <= level + 0.02
    assert 1 < mask.sum(1).mean() < 10  # sets that say something
    # a set holds classes most probable first: the top class is in every non-empty one
    top_in = mask[np.arange(len(test_p)), test_p.argmax(1)]
    assert (top_in | ~mask.any(1)).all()


def test_too_few_held_out_images_for_a_level_give_every_class():
    probs, labels = calibrated_model(9, 3)
    assert trust.conformal_thresholds(probs, labels, "lac", [0.95]) == [None]
    assert trust.set_mask(probs, "lac", None).all()


def test_the_ood_threshold_passes_the_chosen_share_of_in_distribution_inputs():
    rng = np.random.default_rng(4)
    held_out = rng.normal(0, 1, 2000)
    fresh = rng.normal(0, 1, 50000)
    for rate in (0.95, 0.8):
        threshold = trust.ood_threshold(held_out, rate)
        assert rate <= (held_out <= threshold).mean() < rate + 1 / 2000 + 1e-12
        assert (fresh <= threshold).mean() == pytest.approx(rate, abs=0.015)


def test_auroc_is_the_share_of_pairs_ranked_right_ties_half():
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 6, 40).astype(float), rng.integers(2, 9, 30).astype(float)
    pairs = (b[None, :] > a[:, None]).mean() + 0.5 * (b[None, :] == a[:, None]).mean()
    assert trust.auroc(a, b) == pytest.approx(pairs)
    assert trust.auroc(np.zeros(3), np.ones(3)) == 1.0


def test_assess_gives_sets_most_probable_first_and_marks_strange_inputs():
    logits, labels = overconfident(2000, 6)
    fitted = trust.fit(logits, labels)
    t = Trust.from_meta({"trust": fitted}, coverage=0.9)
    assert t.temperature == pytest.approx(fitted["temperature"])
    sure = np.array([[0.97, 0.01, 0.02] + [0.0] * 7])
    unsure = np.full((1, 10), 0.1)
    both = t.assess(np.concatenate([sure, unsure]))
    assert both[0]["set"][0] == 0 and both[0]["recognised"] is True
    assert len(both[1]["set"]) > 1 and both[1]["recognised"] is False
    assert both[1]["ood_score"] > both[0]["ood_score"]
    # a higher coverage never gives smaller sets
    wide = Trust.from_meta({"trust": fitted}, coverage=0.99).assess(unsure)[0]["set"]
    assert set(both[1]["set"]) <= set(wide)


def test_a_checkpoint_without_trust_predicts_at_temperature_one_with_nothing_else():
    t = Trust.from_meta({"classes": ["a", "b"]})
    assert t.temperature == 1.0 and not t.calibrated
    entropy = -(0.6 * np.log(0.6) + 0.4 * np.log(0.4))
    assert t.assess(np.array([[0.6, 0.4]])) == [{"set": None, "recognised": None,
                                                 "ood_score": pytest.approx(entropy)}]


@pytest.mark.parametrize("coverage", [0.3, 1.0, 99])
def test_a_coverage_out_of_range_is_one_sentence(coverage):
    with pytest.raises(ConfigError, match="Coverage must be between"):
        Trust.from_meta({}, coverage=coverage)
