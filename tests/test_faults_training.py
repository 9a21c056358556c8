"""Faults in training, each answered with one sentence and no harm to the model or the run folder:
non-finite losses and gradients, a full disk, damaged checkpoints on --resume, a split whose
samples cannot be loaded (paths relative to another folder), and labels written as 0.0 or "nan".
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from mmfuse.cli import main
from mmfuse.errors import CheckpointError, MmfuseError
from mmfuse.features.batched import Staged
from mmfuse.train import BadSampleError, Trainer, _ckpt_io, latest_checkpoint, verify_checkpoint
from mmfuse.train import step as step_module
from mmfuse.train.logger import MetricsLogger
from mmfuse.train.nonfinite import NonFiniteLossError
from mmfuse.train.preflight import UnloadableDataError
from mmfuse.train.run import train_model
from mmfuse.train.step import BufferSnapshot
from rank_helpers import run_ranks
from train_helpers import (
    SMALL_ENCODERS,
    build_model,
    make_data,
    make_dataset,
    quick_config,
    state_dicts_equal,
    tiny_classifier,
    tiny_model_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 12-row shapes manifest (read-only: tests that damage files make their own)."""
    return make_data(tmp_path_factory.mktemp("shapes") / "data", 4)


def trainer_for(manifest, run_dir, *, seed=0, log=None, **train):
    """(trainer, train dataset) for a fresh seeded tiny model."""
    config = tiny_model_config(manifest.classes)
    model = build_model(config, seed)
    dataset = make_dataset(manifest, config, model, train=True, seed=seed)
    options = {"log": log} if log is not None else {}
    trainer = Trainer(
        model, quick_config(seed=seed, **train), run_dir, model_config=config, **options
    )
    return trainer, dataset


def all_finite(model) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values())


def one_line(message: str) -> bool:
    return "\n" not in message and "Traceback" not in message


# --------------------------------------------------------------------------- non-finite losses


def test_nan_input_rows_are_skipped_named_and_never_reach_the_weights(shapes, tmp_path):
    trainer, dataset = trainer_for(shapes, tmp_path / "run", log=(lines := []).append, epochs=2)
    bad_row = 5
    bad_path = shapes.value(bad_row, "audio")
    load = dataset.load

    # As a float WAV holding NaN would load if a reader let it through (training loads the
    # waveform staged, for the batched front end to turn into a log-mel).
    def nan_audio(name, value, generator=None, staged=False):
        x = load(name, value, generator, staged)
        if value != bad_path:
            return x
        if isinstance(x, Staged):
            return Staged(torch.full_like(x.data, math.nan), x.params)
        return torch.full_like(x, math.nan)

    dataset.load = nan_audio
    result = trainer.fit(dataset)
    assert all_finite(trainer.model)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    [record] = [s for s in result.skipped if s.stage == "train"]
    assert (record.row, record.column, record.path) == (bad_row, "audio", bad_path)
    assert record.reason == "non-finite" and "NaN or Inf" in record.message
    listed = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert record.to_dict() in listed
    skips = [line for line in lines if "was skipped" in line]
    assert len(skips) == 2 and all(f"row {bad_row} (audio: {bad_path})" in s for s in skips)
    assert all(one_line(line) for line in skips)
    # The checkpoints hold finite weights too.
    state = torch.load(result.last_checkpoint / "state.pt", weights_only=True)
    assert state["extra"]["trainer"]["nonfinite_streak"] == 0

    # Under on_bad_sample="error" a NaN input is a bad sample like any other.
    trainer, dataset = trainer_for(shapes, tmp_path / "strict", on_bad_sample="error")
    dataset.load = nan_audio
    with pytest.raises(BadSampleError, match=f"row {bad_row}, column 'audio'"):
        trainer.fit(dataset)


def poison(monkeypatch, calls: set[int] | None = None, value=math.inf):
    """Make the loss of the listed train_step calls (all when None) non-finite, inputs intact."""
    clean = step_module._clean_loss
    count = {"n": 0}

    def poisoned(*args, **kwargs):
        count["n"] += 1
        loss = clean(*args, **kwargs)
        return loss * value if calls is None or count["n"] in calls else loss

    monkeypatch.setattr(step_module, "_clean_loss", poisoned)


def test_a_nonfinite_loss_skips_the_step_and_names_every_row_of_its_batch(
    shapes, tmp_path, monkeypatch
):
    reference, dataset = trainer_for(shapes, tmp_path / "ref", epochs=1, batch_size=4)
    reference.fit(dataset)

    poison(monkeypatch, calls={2})
    trainer, dataset = trainer_for(
        shapes, tmp_path / "run", log=(lines := []).append, epochs=1, batch_size=4
    )
    result = trainer.fit(dataset)
    records = [s for s in result.skipped if s.stage == "train"]
    assert len(records) == 4 and {s.reason for s in records} == {"non-finite-loss"}
    assert {s.column for s in records} == {None}
    rows = ", ".join(str(s.row) for s in records)
    [line] = [line for line in lines if "was skipped" in line]
    assert "epoch 1, batch 2: the loss is inf" in line and f"rows {rows}" in line
    # The skipped step changed nothing, so the run differs from one that trained on that batch.
    assert all_finite(trainer.model)
    assert state_dicts_equal(trainer.model.state_dict(), reference.model.state_dict())


@pytest.mark.parametrize("grad_clip", [1.0, None])
def test_a_nonfinite_gradient_with_a_finite_loss_is_skipped(shapes, tmp_path, grad_clip):
    trainer, dataset = trainer_for(
        shapes, tmp_path / "run", log=(lines := []).append, epochs=1, grad_clip=grad_clip
    )
    param = dict(trainer.model.named_parameters())["fusion.key.weight"]
    calls = {"n": 0}

    def nan_once(grad):
        calls["n"] += 1
        return grad * math.nan if calls["n"] == 1 else grad

    param.register_hook(nan_once)
    trainer.fit(dataset)
    assert all_finite(trainer.model)
    assert any("batch 1: the gradient norm is NaN" in line for line in lines)


def test_nonfinite_batches_in_a_row_stop_with_one_sentence(shapes, tmp_path, monkeypatch):
    poison(monkeypatch, value=math.nan)
    trainer, dataset = trainer_for(shapes, tmp_path / "run", epochs=3, max_nonfinite_batches=3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit(dataset)
    message = str(caught.value)
    assert one_line(message)
    assert "3 batches in a row" in message and "epoch 1, batch 3" in message
    assert "max_nonfinite_batches" in message and "skipped.json" in message
    listed = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert len(listed) == 3 * 4 and {s["reason"] for s in listed} == {"non-finite-loss"}
    assert not state_dicts_equal(before, trainer.model.state_dict())  # nothing stepped
    assert latest_checkpoint(tmp_path / "run") is None


def test_the_cli_reports_a_diverged_run_as_a_data_error(shapes, tmp_path, monkeypatch, capsys):
    poison(monkeypatch, value=math.nan)
    config = tmp_path / "config.json"
    options = {"tensorboard": False, "max_nonfinite_batches": 2}
    config.write_text(json.dumps(cli_config(train_options=options)))
    code = main(["train", shapes.source, "--config", str(config), "--out", str(tmp_path / "o")])
    err = last_error(capsys)
    assert code == 1 and "2 batches in a row" in err


def test_a_checkpoint_never_holds_a_nonfinite_weight(tmp_path):
    from mmfuse.train.checkpoint import save_checkpoint

    model = torch.nn.Linear(4, 3)
    good = save_checkpoint(tmp_path, model, epoch=0, step=1)
    with torch.no_grad():
        model.bias[1] = math.inf
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(tmp_path, model, epoch=0, step=2)
    message = str(caught.value)
    assert one_line(message) and "'bias' holds NaN or Inf" in message and good.name in message
    assert [p.name for p in tmp_path.iterdir()] == [good.name]
    verify_checkpoint(good)


def test_the_checkpoint_check_reads_only_weights_that_train():
    from mmfuse.model.saved import first_nonfinite

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 3))
    model[0].requires_grad_(False)  # a frozen encoder: training cannot change it
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan
    assert first_nonfinite(model) == "0.weight"  # a saved model is checked whole
    assert first_nonfinite(model, trained_only=True) is None
    with torch.no_grad():
        model[1].bias[0] = math.inf
    assert first_nonfinite(model, trained_only=True) == "1.bias"


# --------------------------------------------------------------------------- full disk


def no_space_on(monkeypatch, module, name: str, after: int = 0) -> None:
    """`module.name` raises ENOSPC from its (after+1)-th call on."""
    real = getattr(module, name)
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, full)


def test_disk_full_during_a_checkpoint_is_one_sentence_and_keeps_the_last(
    shapes, tmp_path, monkeypatch
):
    no_space_on(monkeypatch, _ckpt_io, "write_state", after=1)
    trainer, dataset = trainer_for(shapes, tmp_path / "run", epochs=3)
    with pytest.raises(CheckpointError) as caught:
        trainer.fit(dataset)
    message = str(caught.value)
    assert one_line(message)
    assert "no space left on the device to write checkpoint ckpt-" in message
    assert re.search(r"\(it needs about \d+\.\d [kMG]B, \d+\.\d [kMG]B free\)", message)
    assert message.endswith("then run again with --resume")
    [kept] = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("ckpt-")]
    assert kept.name in message
    verify_checkpoint(kept)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".tmp")]


def test_disk_full_elsewhere_in_the_run_folder_is_one_sentence(shapes, tmp_path, monkeypatch):
    no_space_on(monkeypatch, MetricsLogger, "write")
    trainer, dataset = trainer_for(shapes, tmp_path / "run", epochs=1)
    with pytest.raises(MmfuseError, match="no space left on the device") as caught:
        trainer.fit(dataset)
    assert one_line(str(caught.value))


def cli_config(**overrides) -> dict:
    params = {
        "encoders": SMALL_ENCODERS,
        "epochs": 2,
        "batch_size": 4,
        "fusion_dim": 16,
        "device": "cpu",
        "train_options": {"tensorboard": False},
    }
    return {**params, **overrides}


def last_error(capsys) -> str:
    """The CLI's error line (progress bars may precede it on stderr); no traceback allowed."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1].split("\r")[-1]


def test_cli_disk_full_exits_1_with_one_line(shapes, tmp_path, monkeypatch, capsys):
    no_space_on(monkeypatch, _ckpt_io, "write_model", after=1)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cli_config()))
    out = tmp_path / "out"
    code = main(["train", shapes.source, "--config", str(config), "--out", str(out)])
    err = last_error(capsys)
    assert code == 1 and err.startswith("mmfuse train: error: ") and "no space left" in err


# --------------------------------------------------------------------------- damaged checkpoints


def truncate(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def test_resume_says_which_checkpoint_is_damaged_and_resumes_from_the_one_before(shapes, tmp_path):
    reference, dataset = trainer_for(shapes, tmp_path / "ref", epochs=2)
    reference.fit(dataset)
    first, dataset = trainer_for(shapes, tmp_path / "run", epochs=2)
    newest = first.fit(dataset).last_checkpoint
    truncate(newest)

    trainer, dataset = trainer_for(shapes, tmp_path / "run", log=(lines := []).append, epochs=2)
    result = trainer.fit(dataset, resume=True)
    said = "\n".join(lines)
    assert f"--resume: skipping {newest.name}, which is damaged: model.safetensors is 100 " in said
    assert f"{newest.name} moved aside to {newest.name}.damaged" in said
    assert "resumed from ckpt-" in said and "epoch 2, batch 0" in said
    # Epoch 2 again from epoch 1's checkpoint: the same weights as the uninterrupted run.
    assert not state_dicts_equal(trainer.model.state_dict(), reference.model.state_dict())
    assert result.last_checkpoint.name == newest.name
    verify_checkpoint(result.last_checkpoint)
    assert (tmp_path / "run" / f"{newest.name}.damaged").is_dir()


def test_resume_with_only_a_damaged_checkpoint_stops_instead_of_starting_over(shapes, tmp_path):
    first, dataset = trainer_for(shapes, tmp_path / "run", epochs=1)
    only = first.fit(dataset).last_checkpoint
    truncate(only)
    history = (tmp_path / "run" / "metrics.jsonl").read_text()

    trainer, dataset = trainer_for(shapes, tmp_path / "run", epochs=2)
    with pytest.raises(CheckpointError) as caught:
        trainer.fit(dataset, resume=True)
    message = str(caught.value)
    assert one_line(message) and "no usable checkpoint" in message
    assert only.name in message and "model.safetensors is 100 bytes" in message
    assert "will not start over" in message
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == history
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "ckpt-" in p.name) == [only.name]


def test_resume_without_any_checkpoint_says_it_starts_from_scratch(shapes, tmp_path):
    trainer, dataset = trainer_for(shapes, tmp_path / "run", log=(lines := []).append)
    trainer.fit(dataset, resume=True)
    assert any("no checkpoint in" in line and "starting from scratch" in line for line in lines)


# --------------------------------------------------------------------------- unloadable splits


def relative_frame(manifest) -> tuple[pd.DataFrame, Path]:
    """The manifest as a DataFrame of paths relative to its own folder, and that folder."""
    root = Path(manifest.source).parent
    frame = manifest.frame.copy()
    for column in ("image", "audio"):
        frame[column] = [str(Path(p).relative_to(root)) for p in frame[column]]
    return frame, root


def test_paths_relative_to_another_folder_stop_before_training(shapes, tmp_path, monkeypatch):
    frame, root = relative_frame(shapes)
    monkeypatch.chdir(tmp_path)  # the DataFrame's paths do not resolve here
    clf = tiny_classifier(tmp_path / "run")
    with pytest.raises(UnloadableDataError) as caught:
        clf.fit(frame)
    message = str(caught.value)
    assert one_line(message)
    assert "training data <DataFrame>: 12 of 12 samples cannot be loaded" in message
    assert "most common reason: missing (12 rows)" in message
    assert (
        str(tmp_path / frame["image"][0]) in message or str(tmp_path / frame["audio"][0]) in message
    )
    assert "pass root= to fit (mmfuse train --root DIR)" in message
    assert not list((tmp_path / "run").glob("ckpt-*"))

    clf.fit(frame, root=root)
    assert math.isfinite(clf.history_[0]["train_loss"])


def test_cli_root_resolves_a_manifest_of_paths_relative_to_another_folder(shapes, tmp_path, capsys):
    frame, root = relative_frame(shapes)
    manifest = tmp_path / "elsewhere" / "train.csv"
    manifest.parent.mkdir()
    frame.to_csv(manifest, index=False)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cli_config(epochs=1)))
    args = ["train", str(manifest), "--config", str(config)]
    assert main([*args, "--out", str(tmp_path / "a")]) == 1
    err = last_error(capsys)
    assert err.startswith("mmfuse train: error: training data ") and "--root" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--root", str(root)]) == 0


def test_more_than_max_failed_share_unreadable_stops_naming_the_reason(tmp_path):
    manifest = make_data(tmp_path / "data", 2)  # 6 rows
    for row in range(4):
        Path(manifest.value(row, "image")).write_bytes(b"not a PNG at all" * 8)
    trainer, dataset = trainer_for(manifest, tmp_path / "run")
    with pytest.raises(UnloadableDataError) as caught:
        trainer.fit(dataset)
    message = str(caught.value)
    assert one_line(message) and "4 of 6 samples cannot be loaded" in message
    assert "more than max_failed_share=0.5" in message
    assert manifest.value(0, "image") in message or manifest.value(1, "image") in message
    # Allowed a larger share, it trains on the two good rows.
    trainer, dataset = trainer_for(manifest, tmp_path / "lenient", max_failed_share=0.8)
    assert len(trainer.fit(dataset).skipped) == 4


def test_an_unloadable_validation_split_stops_before_training(shapes, tmp_path):
    val = make_data(tmp_path / "val", 1)
    for row in range(len(val)):
        Path(val.value(row, "audio")).unlink()
    trainer, dataset = trainer_for(shapes, tmp_path / "run")
    val_set = make_dataset(val, trainer.model_config, trainer.model, train=False)
    with pytest.raises(UnloadableDataError, match=r"^validation data .*3 of 3 samples"):
        trainer.fit(dataset, val_set)
    # A test split is checked before training too, not after it.
    config = tiny_model_config(shapes.classes)
    with pytest.raises(UnloadableDataError, match=r"^test data .*3 of 3 samples"):
        train_model(shapes, config, quick_config(), tmp_path / "run2", test=val)
    assert not (tmp_path / "run2").exists()


# --------------------------------------------------------------------------- under torchrun

DDP_SCRIPT = r"""
import json, math, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from train_helpers import build_model, make_dataset, quick_config, tiny_model_config
from mmfuse.data.manifest import read_manifest
from mmfuse.features.batched import Staged
from mmfuse.train import Trainer

manifest, run = read_manifest(sys.argv[2]), Path(sys.argv[3])
config = tiny_model_config(manifest.classes)
model = build_model(config, seed=0)
trainer = Trainer(model, quick_config(epochs=2, batch_size=8), run, model_config=config)
dataset = make_dataset(manifest, config, model, train=True)
load, bad = dataset.load, manifest.value(5, "audio")
nan = lambda x: Staged(x.data * math.nan, x.params) if isinstance(x, Staged) else x * math.nan
dataset.load = lambda n, v, g=None, s=False: (lambda x: nan(x) if v == bad else x)(load(n, v, g, s))
trainer.fit(dataset)
rank = int(os.environ["RANK"])
(run / f"weights-{rank}.json").write_text(json.dumps([p.double().sum().item() for p in model.parameters()]))
"""


@pytest.mark.skipif(os.name != "posix", reason="torchrun with gloo")
def test_ranks_agree_to_skip_a_batch_only_one_of_them_holds_nan_in(shapes, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "run"
    args = [str(script), str(Path(__file__).parent), shapes.source, str(run)]
    # A rank that skipped backward alone would leave the other in its all-reduce: a hang.
    code, err = run_ranks(args, 2, tmp_path / "logs")
    assert code == 0, err[-3000:]
    ranks = [json.loads((run / f"weights-{r}.json").read_text()) for r in (0, 1)]
    assert all(math.isfinite(w) for w in ranks[0]) and ranks[0] == pytest.approx(ranks[1])
    listed = json.loads((run / "skipped.json").read_text())
    assert [(s["row"], s["column"], s["reason"]) for s in listed] == [(5, "audio", "non-finite")]


def test_a_skipped_step_puts_batch_norm_statistics_back():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    buffers = ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
    snapshot = BufferSnapshot()
    for _ in range(3):  # the second and third reuse the first's copies
        before = {k: v.clone() for k, v in model.state_dict().items()}
        snapshot.take(model)
        model(torch.randn(2, 3, 8, 8))  # a forward pass in training mode updates the buffers
        assert state_dicts_equal(before, model.state_dict()) == buffers
        snapshot.restore()
        assert state_dicts_equal(before, model.state_dict()) == []
        model(torch.randn(2, 3, 8, 8))  # a step that was kept
    model[1] = torch.nn.BatchNorm2d(4, momentum=0.5)  # a new module: its buffers are put back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot.take(model)
    model(torch.randn(2, 3, 8, 8))
    snapshot.restore()
    assert state_dicts_equal(before, model.state_dict()) == []
