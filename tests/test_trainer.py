"""The Trainer end to end on tiny generated data: learning, determinism, kill-and-resume, bad and
hanging samples, the feature cache, multi-task labels and every training option.

Every fit here trains width-8 encoders on a few dozen generated samples, so each takes about a
second; the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmfuse.data.manifest import read_manifest
from mmfuse.errors import MediaError
from mmfuse.evaluate.metrics import classification_metrics
from mmfuse.features import sample as sample_module
from mmfuse.model import FusionConfig
from mmfuse.train import BadSampleError, Trainer, latest_checkpoint
from mmfuse.train.losses import IGNORE_INDEX
from mmfuse.train.state import LoopState
from train_helpers import (
    build_model,
    make_data,
    make_dataset,
    quick_config,
    state_dicts_equal,
    tiny_model_config,
    without_timing,
)

TESTS = Path(__file__).parent
EPOCH_KEYS = {"epoch", "step", "train_loss", "lr", "train_time", "samples_per_s", "val_loss"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Train and validation manifests from different generator seeds (read-only: don't edit)."""
    root = tmp_path_factory.mktemp("shapes")
    return make_data(root / "train", 8, seed=0), make_data(root / "val", 4, seed=1)


def fit(manifest, run_dir, *, val=None, config=None, modes=None, fusion=None, seed=0, **train):
    """Build a fresh seeded model and its datasets, fit, return (result, model, model config)."""
    config = config or tiny_model_config(manifest.classes, modes=modes, fusion=fusion)
    model = build_model(config, seed)
    options = {k: train.pop(k) for k in ("augment", "decode_timeout") if k in train}
    train_set = make_dataset(manifest, config, model, train=True, seed=seed, **options)
    val_set = make_dataset(val, config, model, train=False) if val is not None else None
    trainer = Trainer(model, quick_config(seed=seed, **train), run_dir, model_config=config)
    return trainer.fit(train_set, val_set), model, config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- learning


def test_learns_separable_shapes(shapes, tmp_path):
    train, val = shapes
    result, _, _ = fit(train, tmp_path / "run", val=val, epochs=8, lr=1e-2, batch_size=4)
    first, last = result.history[0], result.history[-1]
    assert last["val_accuracy"] >= 0.9, [r["val_accuracy"] for r in result.history]
    assert last["train_loss"] < first["train_loss"]
    assert result.best_metric >= 0.9
    assert result.best_checkpoint is not None and result.best_checkpoint.name.startswith("best-")
    # metrics.jsonl: one line per epoch, in order, with the epoch record's keys.
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == list(range(1, 9))
    for line in lines:
        assert EPOCH_KEYS | {"val_accuracy", "val_f1_macro"} <= set(line)
    assert without_timing(lines) == without_timing(result.history)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_run(shapes, tmp_path):
    train, val = shapes
    kwargs = {"val": val, "epochs": 2, "augment": True}
    a, model_a, _ = fit(train, tmp_path / "a", workers=0, **kwargs)
    b, model_b, _ = fit(train, tmp_path / "b", workers=0, **kwargs)
    # The dataset seeds each sample by (seed, epoch, row), so the worker count changes nothing.
    c, model_c, _ = fit(train, tmp_path / "c", workers=2, **kwargs)
    assert without_timing(a.history) == without_timing(b.history) == without_timing(c.history)
    assert state_dicts_equal(model_a.state_dict(), model_b.state_dict()) == []
    assert state_dicts_equal(model_a.state_dict(), model_c.state_dict()) == []
    # ...and another seed really trains differently (the comparison above can fail).
    _, model_d, _ = fit(train, tmp_path / "d", seed=1, **kwargs)
    assert state_dicts_equal(model_a.state_dict(), model_d.state_dict()) != []


# --------------------------------------------------------------------------- kill and resume

RESUME_SCRIPT = """
import json, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)  # the same in every run: thread count can change float sums
sys.path.insert(0, sys.argv[1])
from train_helpers import build_model, make_dataset, quick_config, tiny_model_config

from mmfuse.data.manifest import read_manifest
from mmfuse.features import sample
from mmfuse.train import Trainer

data, run, delay = Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
# Slow decoding down (without changing what is decoded) so that a kill lands mid-epoch.
read_image = sample.read_image
def slow_read_image(*args, **kwargs):
    time.sleep(delay)
    return read_image(*args, **kwargs)
sample.read_image = slow_read_image

manifest = read_manifest(data / "manifest.csv")
config = tiny_model_config(manifest.classes)
model = build_model(config, seed=0)
train = make_dataset(manifest, config, model, train=True, seed=0)
val = make_dataset(manifest, config, model, train=False)
trainer = Trainer(
    model, quick_config(epochs=2, checkpoint_every=1), run, model_config=config, log=print
)
result = trainer.fit(train, val, resume=True)
print("HISTORY", json.dumps(result.history))
"""


@pytest.fixture
def children():
    """Processes a test starts; any still running when it ends (a failed assert) is killed."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, children):
    data = tmp_path / "data"
    manifest = make_data(data, 6)  # 18 rows, batch 4: 5 steps per epoch
    steps_per_epoch = math.ceil(len(manifest) / 4)
    script = tmp_path / "train.py"
    script.write_text(RESUME_SCRIPT)

    def start(run: Path, delay: float = 0.0) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, str(script), str(TESTS), str(data), str(run), str(delay)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(process)
        return process

    full_run, killed_run = tmp_path / "full", tmp_path / "killed"
    full = start(full_run)  # runs beside the one that will be killed: one core each
    # 4 rows × 30 ms a step leaves the poll below ~0.4 s to kill before epoch 2 ends.
    victim = start(killed_run, delay=0.03)
    deadline = time.monotonic() + 120
    # Kill once a mid-epoch checkpoint of epoch 2 is complete: epoch 1 is in the history then.
    # (Complete: meta.json is written last. Globbing never trips over a folder being pruned.)
    while True:
        done = [int(p.name[5:]) for p in killed_run.glob("ckpt-*") if (p / "meta.json").exists()]
        if max(done, default=0) > steps_per_epoch:
            os.kill(victim.pid, signal.SIGKILL)
            break
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no mid-epoch checkpoint appeared"
        time.sleep(0.005)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    killed_at = latest_checkpoint(killed_run)
    step = json.loads((killed_at / "meta.json").read_text())["step"]
    assert steps_per_epoch < step < 2 * steps_per_epoch, "the kill did not land mid-epoch 2"
    assert len(read_jsonl(killed_run / "metrics.jsonl")) == 1

    # latest_checkpoint skips a folder without meta.json (a save that never finished) and one
    # whose files do not match their hashes, and picks the newest complete one.
    unfinished = killed_run / "ckpt-99999999"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"partial")
    damaged = killed_run / "ckpt-99999998"
    damaged.mkdir()
    for f in killed_at.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    assert latest_checkpoint(killed_run) == killed_at
    for folder in (unfinished, damaged):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()

    resumed = start(killed_run)
    out_resumed, err_resumed = resumed.communicate(timeout=120)
    out_full, err_full = full.communicate(timeout=120)
    assert resumed.returncode == 0, err_resumed
    assert full.returncode == 0, err_full
    assert f"resumed from {killed_at.name}" in out_resumed

    last_full, last_resumed = latest_checkpoint(full_run), latest_checkpoint(killed_run)
    assert last_full.name == last_resumed.name == f"ckpt-{2 * steps_per_epoch:08d}"
    weights_full = load_file(last_full / "model.safetensors")
    weights_resumed = load_file(last_resumed / "model.safetensors")
    assert state_dicts_equal(weights_full, weights_resumed) == []

    def history(out: str) -> list[dict]:
        line = next(x for x in out.splitlines() if x.startswith("HISTORY "))
        return without_timing(json.loads(line.removeprefix("HISTORY ")))

    assert history(out_resumed) == history(out_full)
    # metrics.jsonl was restarted from the checkpoint's history: each epoch once, same values.
    lines_full = read_jsonl(full_run / "metrics.jsonl")
    lines_resumed = read_jsonl(killed_run / "metrics.jsonl")
    assert [r["epoch"] for r in lines_resumed] == [1, 2]
    assert without_timing(lines_resumed) == without_timing(lines_full)


# --------------------------------------------------------------------------- bad samples


def test_corrupt_files_are_skipped_and_reported(tmp_path):
    manifest = make_data(tmp_path / "data", 3)
    png = Path(manifest.value(0, "image"))
    wav = Path(manifest.value(1, "audio"))
    png.write_bytes(b"this is not a PNG" * 10)
    wav.write_bytes(wav.read_bytes()[:20])  # cut inside the 44-byte header
    result, _, _ = fit(manifest, tmp_path / "run", epochs=2)
    assert math.isfinite(result.history[0]["train_loss"])
    assert len(result.skipped) == 2  # each bad file once, though every epoch meets it
    found = {(s.row, s.column, Path(s.path)): s for s in result.skipped}
    assert set(found) == {(0, "image", png), (1, "audio", wav)}
    for s in found.values():
        assert s.stage == "decode"
        assert s.reason in MediaError.REASONS
        assert str(s.path) in str(s)
    listed = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert listed == [s.to_dict() for s in result.skipped]

    # Whichever bad row the shuffled order meets first stops the run, named by its path.
    with pytest.raises(BadSampleError, match=f"{png.name}|{wav.name}"):
        fit(manifest, tmp_path / "error", epochs=1, on_bad_sample="error", batch_size=16)


def test_hanging_decode_is_bounded_by_decode_timeout(tmp_path, monkeypatch):
    manifest = make_data(tmp_path / "data", 2, modalities=("image", "text"))
    hangs = Path(manifest.value(3, "image"))
    read_image = sample_module.read_image

    def hanging_read_image(path, *args, **kwargs):
        if Path(path) == hangs:
            time.sleep(5)
        return read_image(path, *args, **kwargs)

    monkeypatch.setattr(sample_module, "read_image", hanging_read_image)
    start = time.perf_counter()
    config = tiny_model_config(manifest.classes, inputs=("image", "text"))
    # The decoded-sample cache may hold this file from an earlier test: decode it here.
    result, _, _ = fit(
        manifest, tmp_path / "run", config=config, epochs=1, decode_timeout=0.3, decoded_cache=False
    )
    assert time.perf_counter() - start < 4
    [skipped] = result.skipped
    assert (skipped.row, skipped.column, skipped.stage) == (3, "image", "timeout")
    assert Path(skipped.path) == hangs
    assert math.isfinite(result.history[0]["train_loss"])


# --------------------------------------------------------------------------- feature cache


def test_frozen_encoder_features_are_cached(tmp_path):
    manifest = make_data(tmp_path / "data", 3, modalities=("image", "text"))
    config = tiny_model_config(
        manifest.classes, inputs=("image", "text"), modes={"image": {"mode": "freeze"}}
    )
    options = {"config": config, "epochs": 2, "cache_dir": str(tmp_path / "cache")}
    first, _, _ = fit(manifest, tmp_path / "run1", val=manifest, **options)
    entries = list((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == len(manifest)

    def fit_counting(run: str):
        """A fresh, identically seeded model whose image encoder counts the rows it encodes."""
        model = build_model(config, seed=0)
        encoder = model.encoders["image"]
        rows = []
        forward = encoder.forward

        def counting_forward(x):
            rows.append(x.shape[0])
            return forward(x)

        encoder.forward = counting_forward
        train = make_dataset(manifest, config, model, train=True)
        val = make_dataset(manifest, config, model, train=False)
        cfg = quick_config(epochs=2, cache_dir=str(tmp_path / "cache"))
        result = Trainer(model, cfg, tmp_path / run, model_config=config).fit(train, val)
        return result, sum(rows)

    second, encoded = fit_counting("run2")
    assert encoded == 0
    # Features read back from disk train exactly as the freshly computed ones did.
    assert without_timing(second.history) == without_timing(first.history)

    changed = Path(manifest.value(2, "image"))
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(changed)
    _, encoded = fit_counting("run3")
    assert encoded == 1
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(manifest) + 1


def test_a_dataset_reused_without_the_cache_loads_files_again(tmp_path):
    manifest = make_data(tmp_path / "data", 2, modalities=("image", "text"))
    config = tiny_model_config(
        manifest.classes, inputs=("image", "text"), modes={"image": {"mode": "freeze"}}
    )
    model = build_model(config)
    train = make_dataset(manifest, config, model, train=True)
    cfg = quick_config(epochs=1, cache_dir=str(tmp_path / "cache"))
    Trainer(model, cfg, tmp_path / "run1", model_config=config).fit(train)
    assert train.features["image"].shape == (len(manifest), model.encoders["image"].output_dim)
    off = quick_config(epochs=1, cache_features=False)
    result = Trainer(model, off, tmp_path / "run2", model_config=config).fit(train)
    assert "image" not in train.features
    assert train[0]["inputs"]["image"].shape == (3, 32, 32)
    assert math.isfinite(result.history[0]["train_loss"])


# --------------------------------------------------------------------------- multi-task


def test_multitask_with_missing_labels(tmp_path):
    def write(root: Path, seed: int):
        make_data(root, 4, seed=seed)
        frame = pd.read_csv(root / "manifest.csv")
        # A second task ("size") labelled on two rows in three; "label" missing on a few rows.
        frame["size"] = ["big" if i % 2 else "small" for i in range(len(frame))]
        frame.loc[frame.index % 3 == 0, "size"] = None
        frame.loc[[1, 5], "label"] = None
        frame.to_csv(root / "manifest.csv", index=False)
        return read_manifest(root / "manifest.csv", label=["label", "size"])

    train, val = write(tmp_path / "train", 0), write(tmp_path / "val", 1)
    config = tiny_model_config(train.classes)
    assert [h.task for h in config.heads] == ["label", "size"]
    model = build_model(config)
    trainer = Trainer(model, quick_config(epochs=2), tmp_path / "run", model_config=config)
    train_set = make_dataset(train, config, model, train=True)
    val_set = make_dataset(val, config, model, train=False)
    result = trainer.fit(train_set, val_set)
    record = result.history[-1]
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    assert {"val_accuracy", "val_size_accuracy", "val_size_f1_macro"} <= set(record)

    out = trainer.predict(val_set)
    for task, prefix in (("label", "val_"), ("size", "val_size_")):
        y, proba = out["labels"][task], out["proba"]["all"][task]
        labelled = y != IGNORE_INDEX
        assert labelled.sum() == val.frame[task].notna().sum() < len(val)
        # Only labelled rows count: accuracy by hand over them matches the epoch record.
        accuracy = float((proba[labelled].argmax(1) == y[labelled]).mean())
        assert record[prefix + "accuracy"] == pytest.approx(accuracy)
        metrics = classification_metrics(
            y[labelled], proba=proba[labelled], labels=val_set.tasks[task], top_k=()
        )
        assert record[prefix + "f1_macro"] == pytest.approx(metrics["f1_macro"])


# --------------------------------------------------------------------------- options

OPTIONS = {
    "sgd-step": {"optimizer": "sgd", "schedule": "step", "step_epochs": 1},
    "balanced-smoothing": {"class_weights": "balanced", "label_smoothing": 0.1},
    "mixup": {"mixup_alpha": 0.4},
    "fgsm": {"fgsm_epsilon": 0.01},
    "bf16": {"precision": "bf16"},
    "channels-last": {"channels_last": True},
    "modality-dropout": {"fusion": FusionConfig("attention", 32, modality_dropout=0.3)},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_training_options(options, tmp_path):
    root = tmp_path / "data"
    make_data(root, 2)
    # Modalities missing from some rows: with 2 image rows in 3 batches of 2, at least one batch
    # has no image at all, so every option meets an input that no row of a batch has.
    frame = pd.read_csv(root / "manifest.csv")
    frame.loc[0:3, "image"] = None
    frame.loc[4, "audio"] = None
    frame.to_csv(root / "manifest.csv", index=False)
    manifest = read_manifest(root / "manifest.csv")
    run = tmp_path / "run"
    result, model, _ = fit(manifest, run, val=manifest, epochs=1, batch_size=2, **options)
    [record] = result.history
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_finetune_after_and_backbone_lr(tmp_path):
    manifest = make_data(tmp_path / "data", 2)  # 6 rows, batch 4: 2 steps per epoch
    modes = {"image": {"finetune_after": 1}}
    config = tiny_model_config(manifest.classes, modes=modes)
    initial = build_model(config).state_dict()
    result, model, _ = fit(
        manifest,
        tmp_path / "run",
        config=config,
        epochs=2,
        lr=1e-2,
        backbone_lr=1e-3,
        schedule="constant",
    )
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert [r["lr"] for r in result.history] == [1e-2, 1e-2]  # lr is the heads' rate

    def image_weights(state: dict) -> dict:
        return {k: v for k, v in state.items() if k.startswith("encoders.image.")}

    after_epoch_1 = load_file(tmp_path / "run" / "ckpt-00000002" / "model.safetensors")
    assert image_weights(after_epoch_1)
    assert state_dicts_equal(image_weights(initial), image_weights(after_epoch_1)) == []
    # The other encoders trained from the start; the image encoder only in epoch 2.
    assert state_dicts_equal(initial, after_epoch_1) != []
    changed = state_dicts_equal(image_weights(after_epoch_1), image_weights(model.state_dict()))
    assert len(changed) == len(image_weights(initial))

    state = torch.load(result.last_checkpoint / "state.pt", weights_only=True)
    rates = {g["name"]: g["initial_lr"] for g in state["optimizer"]["param_groups"]}
    assert rates == {
        "backbone": 1e-3,
        "backbone/no_decay": 1e-3,
        "head": 1e-2,
        "head/no_decay": 1e-2,
    }


def test_resume_restores_a_best_mark_lost_to_a_kill(tmp_path):
    manifest = make_data(tmp_path / "data", 2)
    result, _, config = fit(manifest, tmp_path / "run", epochs=2)
    # Without validation every epoch is the best so far, so the last checkpoint is the best.
    assert result.best_checkpoint.name.endswith(result.last_checkpoint.name.split("-")[-1])
    shutil.rmtree(result.best_checkpoint)  # as if killed before mark_best ran
    model = build_model(config)
    trainer = Trainer(model, quick_config(), tmp_path / "run", model_config=config)
    resumed = trainer.fit(make_dataset(manifest, config, model, train=True), resume=True)
    assert resumed.best_checkpoint is not None
    assert resumed.best_checkpoint.name == result.best_checkpoint.name


def test_checkpoints_store_the_loop_state_under_its_known_keys(tmp_path):
    manifest = make_data(tmp_path / "data", 2)
    result, _, _ = fit(manifest, tmp_path / "run", epochs=1)
    state = torch.load(result.last_checkpoint / "state.pt", weights_only=True)
    saved = state["extra"]["trainer"]
    # A plain dict with these keys, in this order: checkpoint readers need no mmfuse class.
    assert type(saved) is dict
    assert list(saved) == [
        "epoch",
        "batch",
        "step",
        "history",
        "best",
        "best_epoch",
        "bad_epochs",
        "skipped",
        "epoch_loss",
        "epoch_rows",
        "nonfinite_streak",
        "best_loss",
    ]
    assert LoopState.from_dict(saved).to_dict() == saved
    # Checkpoints written before the epoch sums, the streak and the tie-break loss were saved
    # still resume, from 0 (no loss: the next tie counts as better).
    newer = ("epoch_loss", "epoch_rows", "nonfinite_streak", "best_loss")
    older = LoopState.from_dict({k: v for k, v in saved.items() if k not in newer})
    assert (older.epoch_loss, older.epoch_rows, older.nonfinite_streak) == (0.0, 0, 0)
    assert older.best_loss is None
