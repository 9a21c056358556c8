"""Presets pick each modality's encoder and how it trains; explicit choices override them."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mmfuse.data import read_manifest
from mmfuse.model.config import ConfigError
from mmfuse.train.presets import (
    BEST_BACKBONE_LR_RATIO,
    FAST_ENCODERS,
    FROZEN_EPOCHS,
    FROZEN_STEPS,
    MAX_FROZEN_EPOCHS,
    PRETRAINED_ENCODERS,
    TRAINED_EPOCHS,
    default_epochs,
    member_encoders,
    resolve_preset,
)
from mmfuse.train.run import model_config_for

MODALITIES = ("audio", "image", "text", "video")


def every(modality: str) -> bool:
    return True


def nothing(modality: str) -> bool:
    return False


def test_fast_is_the_from_scratch_encoders():
    preset = resolve_preset("fast", MODALITIES, lr=1e-3, epochs=10, installed=every)
    for m in MODALITIES:
        assert preset.encoders[m]["encoder"] == FAST_ENCODERS[m][0]
        assert preset.encoders[m]["mode"] == "finetune"
    assert preset.train == {} and preset.notes == []


def test_medium_freezes_the_pretrained_encoders():
    preset = resolve_preset("medium", MODALITIES, lr=1e-3, epochs=10, installed=every)
    for m in MODALITIES:
        assert preset.encoders[m]["encoder"] == PRETRAINED_ENCODERS[m][0]
        assert preset.encoders[m]["mode"] == "freeze"
    # Video frames go through the image encoder, with the same stage-end features but no grid.
    assert preset.encoders["video"]["options"] == {
        "image": "efficientnet-lite0",
        "image_options": {"features": "stages"},
    }
    assert preset.encoders["image"]["options"] == {"features": "stages", "grid": 3}
    assert preset.train == {}


def test_best_fine_tunes_after_a_warm_up_at_a_lower_rate():
    preset = resolve_preset("best", ["image"], lr=2e-3, epochs=10, installed=every)
    entry = preset.encoders["image"]
    assert entry["mode"] == "finetune" and entry["finetune_after"] == 2
    assert preset.train["backbone_lr"] == pytest.approx(2e-3 * BEST_BACKBONE_LR_RATIO)
    # A one-epoch run still fine-tunes nothing before its only epoch ends: no warm-up past it.
    short = resolve_preset("best", ["image"], lr=1e-3, epochs=1, installed=every)
    assert short.encoders["image"]["finetune_after"] == 0


def test_the_default_falls_back_per_modality_with_a_note():
    only_image = resolve_preset(
        None, ["audio", "image"], lr=1e-3, epochs=5, installed=lambda m: m == "image"
    )
    assert only_image.name == "medium"
    assert only_image.encoders["image"]["encoder"] == PRETRAINED_ENCODERS["image"][0]
    assert only_image.encoders["audio"]["encoder"] == FAST_ENCODERS["audio"][0]
    (note,) = only_image.notes
    assert "audio" in note and "aisfx" in note and "make setup" in note
    none = resolve_preset(None, MODALITIES, lr=1e-3, epochs=5, installed=nothing)
    assert none.name == "fast" and len(none.notes) == 4


def test_a_named_pretrained_preset_without_weights_says_how_to_get_them():
    with pytest.raises(ConfigError, match=r"aisfx.*--preset fast"):
        resolve_preset("medium", ["audio"], lr=1e-3, epochs=5, installed=nothing)
    with pytest.raises(ConfigError, match="not one of fast, medium, best"):
        resolve_preset("huge", ["audio"], lr=1e-3, epochs=5)


def test_explicit_encoders_override_the_preset_per_column():
    frame = pd.DataFrame(
        {"photo": ["a.png", "b.png"], "clip": ["a.wav", "b.wav"], "label": ["x", "y"]}
    )
    manifest = read_manifest(frame, label="label", modalities={"photo": "image", "clip": "audio"})
    preset = resolve_preset("medium", ["image", "audio"], lr=1e-3, epochs=5, installed=every)
    config = model_config_for(
        manifest,
        encoders={"photo": "resnet-tiny", "audio": {"finetune_after": 1, "mode": "finetune"}},
        preset=preset,
    )
    assert (
        config.inputs["photo"].encoder == "resnet-tiny"
        and config.inputs["photo"].mode == "finetune"
    )
    # A dict without an encoder keeps the preset's encoder and changes only what it names.
    clip = config.inputs["clip"]
    assert clip.encoder == PRETRAINED_ENCODERS["audio"][0]
    assert (clip.mode, clip.finetune_after) == ("finetune", 1)
    plain = model_config_for(manifest, preset=preset)
    assert plain.inputs["photo"].mode == "freeze"


def test_default_epochs_are_more_when_every_encoder_is_frozen():
    frame = pd.DataFrame(
        {"photo": ["a.png", "b.png"], "clip": ["a.wav", "b.wav"], "label": ["x", "y"]}
    )
    manifest = read_manifest(frame, label="label", modalities={"photo": "image", "clip": "audio"})
    medium = resolve_preset("medium", ["image", "audio"], lr=1e-3, epochs=None, installed=every)
    frozen = model_config_for(manifest, preset=medium)
    assert default_epochs(frozen) == FROZEN_EPOCHS
    # Frozen: enough epochs for FROZEN_STEPS optimiser steps, within [FROZEN_EPOCHS, MAX].
    assert default_epochs(frozen, rows=90, batch_size=32) == math.ceil(FROZEN_STEPS / 3)
    assert default_epochs(frozen, rows=10_000, batch_size=32) == FROZEN_EPOCHS
    assert default_epochs(frozen, rows=5, batch_size=32) == MAX_FROZEN_EPOCHS
    assert default_epochs(frozen, rows=90, batch_size=8) == max(
        FROZEN_EPOCHS, math.ceil(FROZEN_STEPS / 12)
    )
    # One encoder that trains makes every epoch a pass through it: the shorter default.
    mixed = model_config_for(manifest, encoders={"photo": "resnet-tiny"}, preset=medium)
    assert default_epochs(mixed) == TRAINED_EPOCHS
    fast = resolve_preset("fast", ["image", "audio"], lr=1e-3, epochs=None, installed=every)
    assert default_epochs(model_config_for(manifest, preset=fast)) == TRAINED_EPOCHS
    best = resolve_preset("best", ["image"], lr=1e-3, epochs=None, installed=every)
    assert best.encoders["image"]["finetune_after"] == 2


# ------------------------------------------------------------- an ensemble's encoder axis
def test_a_member_encoder_is_read_the_way_the_preset_reads_its_modality():
    medium = resolve_preset("medium", ["image", "audio"], lr=1e-3, epochs=None, installed=every)
    out = member_encoders(None, medium, {"image": "efficientnet-lite2"}, ["image", "audio"])
    assert out == {
        "image": {
            "encoder": "efficientnet-lite2",
            "options": {"features": "stages", "grid": 3},  # lite0's, which lite2 takes too
            "mode": "freeze",
            "standardize": True,
        }
    }
    # The user's own entry for the modality is the base when there is one.
    mine = {"audio": {"encoder": "mel-cnn", "options": {"width": 8, "n_mels": 32}}}
    out = member_encoders(mine, medium, {"audio": "sound-cnn-tiny"}, ["image", "audio"])
    assert out["audio"] == {"encoder": "sound-cnn-tiny", "options": {"width": 8}}
    fast = resolve_preset("fast", ["image"], lr=1e-3, epochs=None)
    out = member_encoders(None, fast, {"image": "resnet-tiny"}, ["image"])
    assert out["image"]["mode"] == "finetune" and out["image"]["options"]["width"] == 32


def test_a_frozen_random_member_or_a_missing_modality_is_one_sentence():
    medium = resolve_preset("medium", ["image"], lr=1e-3, epochs=None, installed=every)
    with pytest.raises(ConfigError, match=r"cnn has no pretrained weights.*efficientnet-lite0"):
        member_encoders(None, medium, {"image": "cnn"}, ["image"])
    with pytest.raises(ConfigError, match="the data has no audio column; vary the encoders of"):
        member_encoders(None, medium, {"audio": "sound-cnn"}, ["image"])
    assert member_encoders({"x": "cnn"}, medium, {}, ["image"]) == {"x": "cnn"}
