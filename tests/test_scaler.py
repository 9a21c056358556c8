"""Standardised frozen features: `FeatureScaler`, its place in the model, the trainer that fits
it, and best-epoch ties broken by validation loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfuse.model.saved import load_model, save_model
from mmfuse.model.scaler import FeatureScaler
from mmfuse.train import Trainer
from mmfuse.train.presets import resolve_preset
from mmfuse.train.state import LoopState
from train_helpers import build_model, make_data, make_dataset, quick_config, tiny_model_config


def test_scaler_matches_standard_scaling_and_keeps_constant_features():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(40, 6)).astype(np.float32)
    x[:, 2] = 7.0  # constant on these rows
    scaler = FeatureScaler(6).fit(torch.from_numpy(x))
    expected = (x - x.mean(0)) / np.where(x.std(0) > 1e-6, x.std(0), 1.0)
    out = scaler(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert scaler.scale[2] == 1.0 and np.allclose(out[:, 2], 0.0)
    present = torch.tensor([True, False] * 20)
    masked = scaler(torch.from_numpy(x), present)
    assert torch.all(masked[~present] == 0) and torch.allclose(
        masked[present], torch.tensor(out)[present]
    )


def test_scaler_without_rows_stays_the_identity_and_rejects_other_widths():
    scaler = FeatureScaler(3).fit(torch.zeros(0, 3))
    x = torch.randn(4, 3)
    assert torch.equal(scaler(x), x)
    with pytest.raises(ValueError, match="3 features"):
        scaler.fit(torch.zeros(5, 4))


def test_pretrained_presets_standardise_and_fast_does_not():
    def modes(name):
        preset = resolve_preset(name, ["image", "audio"], lr=1e-3, epochs=None, installed=bool)
        return {m: e.get("standardize", False) for m, e in preset.encoders.items()}

    assert modes("medium") == {"image": True, "audio": True}
    assert modes("best") == {"image": True, "audio": True}
    assert modes("fast") == {"image": False, "audio": False}


def _frozen_config(manifest, standardize: bool):
    mode = {"mode": "freeze", "standardize": standardize}
    return tiny_model_config(manifest.classes, inputs=("image", "text"), modes={"image": mode})


def expected_scale(feats: torch.Tensor) -> torch.Tensor:
    std = feats.std(0, unbiased=False)
    varies = std > 1e-6
    floor = 0.01 * std[varies].median()
    return torch.where(varies, std.clamp_min(floor), 1.0)


# How the image input trains: frozen with or without the cache; fine-tuned after a frozen
# epoch (the `best` preset), whose statistics come from the cache filled for them.
TRAINING = {
    "frozen, cached": ({"mode": "freeze"}, True),
    "frozen, not cached": ({"mode": "freeze"}, False),
    "fine-tuned later": ({"mode": "finetune", "finetune_after": 1}, True),
}


@pytest.mark.parametrize("training", TRAINING)
def test_trainer_fits_the_scaler_on_the_training_rows(tmp_path, training):
    fields, cache = TRAINING[training]
    manifest = make_data(tmp_path / "data", 3, modalities=("image", "text"))
    mode = {**fields, "standardize": True}
    config = tiny_model_config(manifest.classes, inputs=("image", "text"), modes={"image": mode})
    model = build_model(config)
    train = make_dataset(manifest, config, model, train=True)
    cfg = quick_config(epochs=1, cache_dir=str(tmp_path / "cache"), cache_features=cache)
    Trainer(model, cfg, tmp_path / "run", model_config=config).fit(train)
    assert bool(list((tmp_path / "cache" / "features").rglob("*.npy"))) == cache
    # The frozen encoder's own eval-mode features of every training row.
    plain = make_dataset(manifest, config, model, train=False)
    encoder = model.encoders["image"].eval()
    with torch.no_grad():
        feats = torch.cat([encoder(plain[i]["inputs"]["image"][None]) for i in range(len(plain))])
    scaler = model.scalers["image"]
    torch.testing.assert_close(scaler.mean, feats.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scaler.scale, expected_scale(feats), atol=1e-5, rtol=1e-4)
    assert "text" not in model.scalers


def test_a_fitted_scaler_keeps_its_statistics_when_the_model_trains_again(tmp_path):
    manifest = make_data(tmp_path / "data", 2, modalities=("image", "text"))
    config = _frozen_config(manifest, standardize=True)
    model = build_model(config)
    scaler = model.scalers["image"]
    assert not scaler.fitted
    scaler.fit(torch.randn(10, scaler.mean.numel()) * 3 + 1)
    assert scaler.fitted
    kept = scaler.mean.clone(), scaler.scale.clone()
    train = make_dataset(manifest, config, model, train=True)
    cfg = quick_config(epochs=1, cache_dir=str(tmp_path / "cache"))
    Trainer(model, cfg, tmp_path / "run", model_config=config).fit(train)
    assert torch.equal(scaler.mean, kept[0]) and torch.equal(scaler.scale, kept[1])


def test_barely_varying_features_are_not_blown_up_and_bf16_is_scaled_in_float():
    x = torch.randn(1000, 4)
    x[:, 3] = 0.0
    x[0, 3] = 1e-3  # a unit active on one row in a thousand: deviation ~3e-5
    scaler = FeatureScaler(4).fit(x)
    varying = x.std(0, unbiased=False)  # every column varies, the last barely
    assert scaler.scale[3] == pytest.approx(0.01 * float(varying.median()), rel=1e-4)
    assert scaler(x).abs().max() < 10
    out = scaler(torch.full((2, 4), 20.0, dtype=torch.bfloat16))
    assert out.dtype == torch.float32


def test_scaled_model_saves_and_loads_its_statistics(tmp_path):
    manifest = make_data(tmp_path / "data", 2, modalities=("image", "text"))
    config = _frozen_config(manifest, standardize=True)
    model = build_model(config)
    model.scalers["image"].fit(torch.randn(10, model.encoders["image"].output_dim) * 4 + 2)
    save_model(tmp_path / "model", model, config)
    loaded, _, _ = load_model(tmp_path / "model")
    assert torch.equal(loaded.scalers["image"].mean, model.scalers["image"].mean)
    assert torch.equal(loaded.scalers["image"].scale, model.scalers["image"].scale)
    # A model saved without standardisation (every model before it existed) has no scalers.
    plain = _frozen_config(manifest, standardize=False)
    assert not any(k.startswith("scalers.") for k in build_model(plain).state_dict())


def test_scaling_changes_the_logits_only_through_the_fused_features(tmp_path):
    manifest = make_data(tmp_path / "data", 2, modalities=("image", "text"))
    config = _frozen_config(manifest, standardize=True)
    model = build_model(config).eval()
    d = model.encoders["image"].output_dim
    feats = {"image": torch.randn(4, d) * 10 + 5, "text": torch.randn(4, 16)}
    mask = torch.tensor([[True, True], [True, True], [False, True], [True, True]])
    [task] = model.tasks
    scaler = model.scalers["image"]
    before = model.classify(feats, mask)[task]
    scaler.fit(feats["image"][mask[:, 0]])
    after = model.classify(feats, mask)[task]
    by_hand = dict(feats, image=(feats["image"] - scaler.mean) / scaler.scale)
    scaler.mean.zero_()
    scaler.scale.fill_(1.0)
    assert torch.allclose(after, model.classify(by_hand, mask)[task], atol=1e-5)
    assert not torch.allclose(before, after)


def test_best_epoch_ties_on_accuracy_go_to_the_lower_validation_loss():
    state = LoopState()
    records = [
        {"epoch": 0, "val_accuracy": 0.9, "val_loss": 0.5},
        {"epoch": 1, "val_accuracy": 0.9, "val_loss": 0.3},  # same accuracy, lower loss
        {"epoch": 2, "val_accuracy": 0.9, "val_loss": 0.4},
        {"epoch": 3, "val_accuracy": 0.8, "val_loss": 0.1},
    ]
    better = [state.update_best(r, "val_accuracy", "max") for r in records]
    assert better == [True, True, False, False]
    assert state.best_epoch == 1 and state.bad_epochs == 2
    # Monitoring the loss itself: plain comparison.
    state = LoopState()
    assert [state.update_best(r, "val_loss", "min") for r in records] == [True, True, False, True]
    # A best epoch whose loss was NaN loses a tie to a finite loss.
    state = LoopState()
    nan = {"epoch": 0, "val_accuracy": 0.9, "val_loss": float("nan")}
    assert state.update_best(nan, "val_accuracy", "max")
    assert state.update_best(records[0], "val_accuracy", "max") and state.best_epoch == 0
    assert state.best_loss == 0.5


def test_mixup_mixes_an_absent_standardised_input_as_its_mean(tmp_path):
    """A cached row without the input is zeros; mixed raw with a present row and standardised,
    it would land (λa − μ)/σ, far out. Set to the mean first, it lands λ(a − μ)/σ."""
    from mmfuse.train.step import _absent_as_mean

    manifest = make_data(tmp_path / "data", 2, modalities=("image", "text"))
    model = build_model(_frozen_config(manifest, standardize=True))
    d = model.encoders["image"].output_dim
    scaler = model.scalers["image"].fit(torch.randn(20, d) + 20.0)
    feats = torch.cat([torch.randn(1, d) + 20.0, torch.zeros(1, d)])
    mask = torch.tensor([[True, True], [False, True]])
    filled = _absent_as_mean(model, "image", feats, mask)
    assert torch.equal(filled[0], feats[0]) and torch.equal(filled[1], scaler.mean)
    lam = 0.3
    mixed = lam * filled[0] + (1 - lam) * filled[1]
    torch.testing.assert_close(scaler(mixed[None])[0], lam * scaler(feats[:1])[0])
    assert torch.equal(_absent_as_mean(model, "text", feats, mask), feats)  # not scaled


def test_token_fusions_get_no_scalers(tmp_path):
    """A token fusion reads the encoders' token sequences, not the vectors scalers act on."""
    from mmfuse.model import FusionConfig

    manifest = make_data(tmp_path / "data", 2, modalities=("image", "text"))
    mode = {"mode": "freeze", "standardize": True}
    config = tiny_model_config(
        manifest.classes,
        inputs=("image", "text"),
        modes={"image": mode},
        fusion=FusionConfig("transformer", 32),
    )
    assert len(build_model(config).scalers) == 0
    assert "image" in build_model(_frozen_config(manifest, standardize=True)).scalers
