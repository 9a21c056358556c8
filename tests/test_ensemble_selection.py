"""Ensemble weights: plain greedy selection and its bagged version, on numpy probabilities (no
training): determinism, weights that sum to 1, members never picked at 0, and on a few
validation rows the bagged weights carrying over to held-out rows better than the plain ones."""

from __future__ import annotations

import numpy as np
import pytest

from mmfuse.train.selection import bagged_weights, gain_in_se, greedy_weights, score


def _noisy(y: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """4-class probabilities favouring the true class, blurred by `noise`."""
    logits = rng.normal(0, noise, (len(y), 4))
    logits[np.arange(len(y)), y] += 2.0
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _split(noises: list[float], n_val: int, n_test: int, seed: int):
    """`(validation probas, validation labels, test probas, test labels)` of members whose
    probabilities have the given noise (equal noise: equally good members)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n_val + n_test)
    probas = [_noisy(y, noise, rng) for noise in noises]
    val = {f"m{i}": {"t": p[:n_val]} for i, p in enumerate(probas)}
    test = {f"m{i}": p[n_val:] for i, p in enumerate(probas)}
    return val, {"t": y[:n_val]}, test, y[n_val:]


def _test_loss(weights: dict, test: dict, y: np.ndarray) -> float:
    return score("log_loss", y, sum(w * test[m] for m, w in weights.items()))


def test_bagged_selection_is_deterministic_for_a_seed_and_its_weights_sum_to_1():
    val, labels, _, _ = _split([1.5, 1.5, 1.5], 30, 0, seed=0)
    first = bagged_weights(val, labels, seed=3)
    assert first == bagged_weights(val, labels, seed=3)
    assert bagged_weights(val, labels, seed=4).bagged != first.bagged  # the bags differ
    for selection in (first, bagged_weights(val, labels, "accuracy", seed=3)):
        assert sum(selection.weights.values()) == pytest.approx(1.0)
        assert sum(selection.bagged.values()) == pytest.approx(1.0)
        assert min(selection.weights.values()) >= 0 and 0 <= selection.shrink <= 1


def test_a_member_never_picked_weighs_0():
    val, labels, _, _ = _split([1.0, 1.2], 60, 0, seed=1)
    val["uniform"] = {"t": np.full_like(val["m0"]["t"], 0.25)}  # never the better choice
    assert greedy_weights(val, labels)["uniform"] == 0
    selection = bagged_weights(val, labels, seed=0)
    assert selection.bagged["uniform"] == 0 and selection.weights["uniform"] == 0
    assert selection.weights["m0"] > 0 and selection.weights["m1"] > 0


def test_no_bags_is_the_plain_selection():
    val, labels, _, _ = _split([1.0, 1.5, 3.0], 40, 0, seed=2)
    assert bagged_weights(val, labels, bags=0).weights == greedy_weights(val, labels)


def test_on_few_rows_bagging_carries_over_better_than_plain_selection():
    """Three equally good members, 30 validation rows: the plain selection weighs whichever
    the 30 rows happen to favour; the bagged one spreads the weight, and scores better on the
    2,000 held-out rows, on average over 20 draws and in most of them."""
    plain, bagged = [], []
    for seed in range(20):
        val, labels, test, y = _split([1.5, 1.5, 1.5], 30, 2000, seed)
        plain.append(_test_loss(greedy_weights(val, labels), test, y))
        bagged.append(_test_loss(bagged_weights(val, labels, seed=seed).weights, test, y))
    plain, bagged = np.array(plain), np.array(bagged)
    assert bagged.mean() < plain.mean() - 0.01
    assert (bagged < plain).mean() >= 0.7


def test_on_many_rows_a_clearly_better_member_keeps_its_weight():
    """One member far better, 225 validation rows (avdigits' split): no shrinking, and the
    held-out loss is as low as the plain selection's."""
    val, labels, test, y = _split([0.8, 2.0, 2.0], 225, 2000, seed=5)
    selection = bagged_weights(val, labels, seed=0)
    assert selection.shrink == 0 and selection.weights["m0"] > 0.8
    plain = _test_loss(greedy_weights(val, labels), test, y)
    assert _test_loss(selection.weights, test, y) < plain + 0.005


def test_tasks_share_the_resampled_rows_and_unlabelled_rows_are_left_out():
    val, labels, _, _ = _split([1.0, 1.5], 40, 0, seed=6)
    other = {m: {"u": p["t"][::-1].copy()} for m, p in val.items()}
    both = {m: {**val[m], **other[m]} for m in val}
    y_u = labels["t"][::-1].copy()
    y_u[:10] = -1  # rows without a label for task u
    selection = bagged_weights(both, {"t": labels["t"], "u": y_u}, seed=0)
    assert sum(selection.weights.values()) == pytest.approx(1.0)


# --------------------------------------------------------------- choose_weights: auto, equal
class _Ensemble:
    """What `choose_weights` uses of an `EnsembleModel`: members, tasks, weights and its own
    temperature."""

    def __init__(self, names):
        self.members = dict.fromkeys(names)
        self.tasks = ["t"]
        self.weights = None
        self.temperature = None

    def set_temperatures(self, temperatures):
        self.temperature = temperatures["t"]


def _choose(noises, rows, how):
    from mmfuse.train.ensemble import choose_weights

    val, labels, _, _ = _split(noises, rows, 0, seed=1)
    model, log = _Ensemble(list(val)), []
    out = choose_weights(model, val, labels, "log_loss", calibrate=True, log=log.append, how=how)
    return model, out, log[0]


def test_auto_weighs_equally_and_keeps_t_at_1_on_few_rows():
    # One member far better: on 225 rows selection weighs it, on 30 "auto" does not trust them.
    model, out, line = _choose([0.5, 3.0, 3.0], 30, "auto")
    assert model.weights == pytest.approx(dict.fromkeys(["m0", "m1", "m2"], 1 / 3))
    assert model.temperature is None and out["weighing"] == "equal"
    assert "30 labelled rows, fewer than 200" in line
    model, out, line = _choose([0.5, 3.0, 3.0], 225, "auto")
    assert out["weighing"] == "selected" and model.weights["m0"] > 0.5
    assert model.temperature is not None and "bagged selection" in line
    assert "standard errors better than equal weights" in line and out["why"] in line


def test_auto_weighs_equally_when_selection_barely_beats_equal_weights():
    # A member slightly better on 225 rows: selection leans on it (m0 about 0.5) for a gain
    # of about 2 standard errors, under the bar, so equal weights and T = 1.
    model, out, line = _choose([1.2, 1.6, 1.6], 225, "auto")
    assert out["weighing"] == "equal" and model.temperature is None
    assert model.weights == pytest.approx(dict.fromkeys(["m0", "m1", "m2"], 1 / 3))
    gain = float(line.split("selection's gain over them ")[1].split(" ")[0])
    assert 1 < gain < 4 and "standard errors, under 4" in line
    model, out, _ = _choose([1.2, 1.6, 1.6], 225, "selected")
    assert model.weights["m0"] > 0.4  # what auto turned down


def test_asked_weighings_override_the_row_count():
    model, out, _ = _choose([0.5, 3.0, 3.0], 30, "selected")
    assert out["weighing"] == "selected" and model.weights["m0"] > 0.5
    assert model.temperature is not None  # the old behaviour, temperature included
    model, out, line = _choose([1.5, 1.5, 1.5], 225, "selected")
    assert out["weighing"] == "selected" and "bagged selection" in line  # no gain asked for
    model, out, line = _choose([0.5, 3.0, 3.0], 225, "equal")
    assert model.weights == pytest.approx(dict.fromkeys(["m0", "m1", "m2"], 1 / 3))
    assert model.temperature is None and "as asked" in line  # equal weights keep T at 1


# ------------------------------------------------------------------------------- gain_in_se
def test_the_gain_is_zero_for_equal_weights_and_signed_by_which_mix_is_better():
    val, labels, _, _ = _split([0.5, 3.0, 3.0], 225, 0, seed=2)
    assert gain_in_se(val, labels, dict.fromkeys(val, 1 / 3)) == 0.0
    on_best = gain_in_se(val, labels, {"m0": 1.0})
    assert on_best > 4 and on_best == gain_in_se(val, labels, {"m0": 1.0})  # seeded
    assert gain_in_se(val, labels, {"m1": 1.0}) < -4


def test_the_gain_in_log_loss_matches_the_paired_per_row_standard_error():
    # For a per-row metric the bootstrap's spread is the textbook paired standard error.
    val, labels, _, _ = _split([1.0, 2.0], 300, 0, seed=5)
    y = labels["t"]
    rows = np.arange(len(y))
    on_m0 = -np.log(val["m0"]["t"][rows, y])
    equal = -np.log((val["m0"]["t"] + val["m1"]["t"])[rows, y] / 2)
    d = equal - on_m0  # per row: how much better all the weight on m0 does than equal weights
    paired = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert gain_in_se(val, labels, {"m0": 1.0, "m1": 0.0}) == pytest.approx(paired, rel=0.2)
