"""Checkpoints keep frozen tensors in one file per run folder: exact resume, reuse only of equal
tensors, pruning, and damaged or missing frozen files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from mmfuse.train import Trainer, _ckpt_io
from mmfuse.train import state as train_state
from mmfuse.train.checkpoint import (
    META_FILE,
    MODEL_FILE,
    CheckpointError,
    best_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    mark_best,
    remove_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from train_helpers import (
    build_model,
    make_data,
    make_dataset,
    quick_config,
    state_dicts_equal,
    tiny_model_config,
    without_timing,
)


class Frozen(nn.Module):
    """A frozen encoder (a weight without gradient, a batch norm in eval mode) and a trained
    head, as the `medium` preset trains on cached features."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6))
        self.head = nn.Linear(6, 3)
        self.encoder.requires_grad_(False)

    def forward(self, x):
        with torch.no_grad():
            features = self.encoder(x)
        return self.head(features)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # as a frozen encoder stays
        return self


FROZEN_NAMES = {
    "encoder.0.weight",
    "encoder.0.bias",
    "encoder.1.weight",
    "encoder.1.bias",
    "encoder.1.running_mean",
    "encoder.1.running_var",
    "encoder.1.num_batches_tracked",
}


def save(run_dir: Path, model: nn.Module, step: int, optimizer=None, **kwargs) -> Path:
    kwargs.setdefault("frozen_min_bytes", 0)
    return save_checkpoint(run_dir, model, optimizer, epoch=step, step=step, **kwargs)


def frozen_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("frozen-*.safetensors"))


def stored_names(path: Path) -> set[str]:
    with safe_open(path, "pt") as f:
        return set(f.keys())


def meta(checkpoint: Path) -> dict:
    return json.loads((checkpoint / META_FILE).read_text())


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    return state_dicts_equal(a.state_dict(), b.state_dict()) == []


def step(model: nn.Module, optimizer, seed: int) -> None:
    torch.manual_seed(seed)
    model.train()
    loss = model(torch.randn(8, 6)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_tensors_are_written_once_and_every_checkpoint_loads_whole(tmp_path):
    model = Frozen()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=0.1)
    model.train()
    saved = []
    for n in range(1, 4):
        step(model, optimizer, n)
        path = save(tmp_path, model, n, optimizer, keep_last=None)
        saved.append((path, {k: v.clone() for k, v in model.state_dict().items()}))

    [frozen] = frozen_files(tmp_path)
    assert stored_names(tmp_path / frozen) == FROZEN_NAMES
    for path, expected in saved:
        assert stored_names(path / MODEL_FILE) == {"head.weight", "head.bias"}
        assert meta(path)["version"] == 2 and meta(path)["frozen"]["file"] == frozen
        verify_checkpoint(path)
        loaded = Frozen(seed=99)
        load_checkpoint(path, loaded, restore_rng=False)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def test_resume_with_a_frozen_file_is_exact(tmp_path):
    model = Frozen()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=0.1)
    for n in range(3):
        step(model, optimizer, n)
    save(tmp_path, model, 3, optimizer)
    for n in range(3, 6):
        step(model, optimizer, n)

    resumed = Frozen(seed=7)
    optimizer2 = torch.optim.AdamW(resumed.head.parameters(), lr=0.1)
    load_checkpoint(latest_checkpoint(tmp_path), resumed, optimizer2)
    for n in range(3, 6):
        step(resumed, optimizer2, n)
    assert states_equal(resumed, model)


@pytest.mark.parametrize("how", ["in place", "behind autograd", "new tensor"])
def test_a_changed_frozen_weight_gets_a_new_file(tmp_path, how):
    model = Frozen().eval()
    first = save(tmp_path, model, 1, keep_last=1)
    old = frozen_files(tmp_path)
    weight = model.encoder[0].weight
    if how == "in place":
        with torch.no_grad():
            weight.add_(1.0)
    elif how == "behind autograd":  # .data does not bump the version counter
        weight.data.add_(1.0)
    else:
        model.encoder[0].weight = nn.Parameter(weight.detach() + 1.0, requires_grad=False)
    second = save(tmp_path, model, 2, keep_last=1)

    new = frozen_files(tmp_path)
    assert len(new) == 1 and new != old  # the old file went with the pruned checkpoint
    assert not first.exists()
    loaded = Frozen(seed=5).eval()
    load_checkpoint(second, loaded, restore_rng=False)
    assert states_equal(loaded, model)


def test_unfreezing_moves_tensors_into_each_checkpoint(tmp_path):
    model = Frozen().eval()
    save(tmp_path, model, 1, keep_last=None)
    model.encoder[0].requires_grad_(True)  # the `best` preset after its head warm-up
    second = save(tmp_path, model, 2, keep_last=None)
    assert stored_names(second / MODEL_FILE) == {
        "head.weight",
        "head.bias",
        "encoder.0.weight",
        "encoder.0.bias",
    }
    assert len(frozen_files(tmp_path)) == 2  # both still named by a checkpoint
    model.encoder.requires_grad_(True)
    model.train()  # the batch norm now updates its statistics: not frozen either
    model.encoder.train()
    third = save(tmp_path, model, 3, keep_last=1)
    assert MODEL_FILE in meta(third)["files"] and "frozen" not in meta(third)
    assert frozen_files(tmp_path) == []
    loaded = Frozen(seed=3)
    load_checkpoint(third, loaded, restore_rng=False)
    assert states_equal(loaded, model)


def test_small_frozen_parts_stay_in_one_self_contained_file(tmp_path):
    path = save(tmp_path, Frozen().eval(), 1, frozen_min_bytes=1 << 20)
    assert frozen_files(tmp_path) == []
    assert "frozen" not in meta(path) and meta(path)["version"] == 1
    assert len(stored_names(path / MODEL_FILE)) == len(Frozen().state_dict())
    never = save(tmp_path / "b", Frozen().eval(), 1, frozen_min_bytes=None)
    assert frozen_files(never.parent) == []


def test_tied_trained_weights_load_tied(tmp_path):
    model = Frozen().eval()
    model.out = nn.Linear(6, 3, bias=False)
    model.out.weight = model.head.weight
    path = save(tmp_path, model, 1)
    loaded = Frozen(seed=4).eval()
    loaded.out = nn.Linear(6, 3, bias=False)
    loaded.out.weight = loaded.head.weight
    load_checkpoint(path, loaded, restore_rng=False)
    assert loaded.out.weight is loaded.head.weight
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_best_keeps_its_frozen_file_and_remove_deletes_all(tmp_path):
    model = Frozen().eval()
    best = mark_best(save(tmp_path, model, 1, keep_last=1))
    with torch.no_grad():
        model.encoder[0].weight.mul_(2)
    save(tmp_path, model, 2, keep_last=1)
    assert len(frozen_files(tmp_path)) == 2  # ckpt-2's and best-1's
    loaded = Frozen(seed=6).eval()
    load_checkpoint(best_checkpoint(tmp_path), loaded, restore_rng=False)
    assert torch.equal(loaded.encoder[0].weight, Frozen().encoder[0].weight)
    assert best == best_checkpoint(tmp_path)
    remove_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_frozen_file_is_named_and_skipped(tmp_path):
    good = save(Path(tmp_path / "good"), Frozen().eval(), 1)
    path = save(tmp_path, Frozen().eval(), 2)
    [name] = frozen_files(tmp_path)
    data = bytearray((tmp_path / name).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match its name") as caught:
        verify_checkpoint(path)
    assert name in str(caught.value)
    assert latest_checkpoint(tmp_path) is None
    verify_checkpoint(good)


def test_a_checkpoint_copied_without_its_frozen_file_says_so(tmp_path):
    path = save(tmp_path / "run", Frozen().eval(), 1)
    copy = tmp_path / "elsewhere" / path.name
    copy.mkdir(parents=True)
    for child in path.iterdir():
        (copy / child.name).write_bytes(child.read_bytes())
    with pytest.raises(CheckpointError, match=r"missing.*copy the file with the checkpoint"):
        load_checkpoint(copy, Frozen(), restore_rng=False)


def test_meta_json_cannot_point_outside_the_run_folder(tmp_path):
    path = save(tmp_path, Frozen().eval(), 1)
    data = meta(path)
    data["frozen"]["file"] = "../../etc/frozen-" + "0" * 64 + ".safetensors"
    (path / META_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="malformed"):
        verify_checkpoint(path)


def test_a_trainer_writes_a_frozen_encoder_once_and_resumes_exactly(tmp_path, monkeypatch):
    def split_always(*args, **kwargs):  # the tiny encoder is far below the default threshold
        return save_checkpoint(*args, **kwargs, frozen_min_bytes=0)

    monkeypatch.setattr(train_state, "save_checkpoint", split_always)
    manifest = make_data(tmp_path / "data", 3, modalities=("image", "text"))
    config = tiny_model_config(
        manifest.classes, inputs=("image", "text"), modes={"image": {"mode": "freeze"}}
    )

    def run(run_dir: Path, epochs: int, resume: bool = False):
        model = build_model(config)
        train = make_dataset(manifest, config, model, train=True)
        val = make_dataset(manifest, config, model, train=False)
        options = quick_config(epochs=epochs, cache_dir=str(tmp_path / "cache"))
        trainer = Trainer(model, options, run_dir, model_config=config)
        return trainer.fit(train, val, resume=resume), model

    full, full_model = run(tmp_path / "full", 3)
    [frozen] = frozen_files(tmp_path / "full")
    image = {n for n in full_model.state_dict() if n.startswith("encoders.image.")}
    assert image and image <= stored_names(tmp_path / "full" / frozen)
    assert not image & stored_names(full.last_checkpoint / MODEL_FILE)

    # As if killed during epoch 3: the run folder as it was after epoch 2's checkpoint.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    for folder in part.glob("*-0000000[7-9]"):
        shutil.rmtree(folder)
    assert [p.name for p in part.glob("ckpt-*")] == ["ckpt-00000006"]
    resumed, model = run(part, 3, resume=True)
    assert without_timing(resumed.history) == without_timing(full.history)
    assert state_dicts_equal(model.state_dict(), full_model.state_dict()) == []


def test_a_frozen_file_left_by_a_killed_save_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    ours = _ckpt_io.scratch_name("tmp", "frozen")
    theirs = ours.replace(f"-{os.getpid()}-", f"-{dead}-")
    for name in (ours, theirs):
        (tmp_path / name).write_bytes(b"half a frozen file")
    save(tmp_path, Frozen().eval(), 1)
    names = {p.name for p in tmp_path.iterdir()}
    assert theirs not in names  # its process is gone
    assert ours in names  # this process may still be writing it


def test_a_full_disk_while_writing_the_frozen_file_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    model = Frozen().eval()
    first = save(tmp_path, model, 1)
    with torch.no_grad():
        model.encoder[0].weight.add_(1.0)  # the next save needs a new frozen file
    write = _ckpt_io.write_tensors

    def full(path, tensors):
        write(path, tensors)  # written, then the disk fills: as a file half on disk
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(_ckpt_io, "write_tensors", full)
    with pytest.raises(CheckpointError, match="no space left on the device") as caught:
        save(tmp_path, model, 2)
    assert f"the last checkpoint, {first}, is untouched" in str(caught.value)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [first.name, *frozen_files(tmp_path)] and len(names) == 2  # no scratch
    assert latest_checkpoint(tmp_path) == first


def test_prune_deletes_no_frozen_file_when_a_meta_json_cannot_be_read(tmp_path, monkeypatch):
    model = Frozen().eval()
    save(tmp_path, model, 1)
    read_text = Path.read_text

    def flaky(self, *args, **kwargs):  # a passing I/O error on every meta.json
        if self.name == META_FILE:
            raise OSError(errno.EIO, "Input/output error", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", flaky)
    second = save(tmp_path, model, 2, keep_last=2)
    monkeypatch.undo()
    assert len(frozen_files(tmp_path)) == 1
    verify_checkpoint(second)
    assert latest_checkpoint(tmp_path) == second


def test_frozen_files_are_compared_bit_for_bit(tmp_path):
    model = Frozen().eval()
    with torch.no_grad():
        model.encoder[0].weight[0, 0] = float("nan")  # equal to itself, bit for bit
        model.encoder[0].bias.zero_()
    save(tmp_path, model, 1, keep_last=None)
    [first] = frozen_files(tmp_path)
    save(tmp_path, model, 2, keep_last=None)
    assert frozen_files(tmp_path) == [first]  # reused, NaN and all
    with torch.no_grad():
        model.encoder[0].bias.neg_()  # -0.0: equal by value, not by bits
    third = save(tmp_path, model, 3, keep_last=None)
    assert len(frozen_files(tmp_path)) == 2
    loaded = Frozen(seed=8).eval()
    load_checkpoint(third, loaded, restore_rng=False)
    assert torch.signbit(loaded.encoder[0].bias).all()


def test_a_frozen_file_of_the_wrong_size_or_missing_is_named(tmp_path):
    path = save(tmp_path, Frozen().eval(), 1)
    [name] = frozen_files(tmp_path)
    with open(tmp_path / name, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match=r"bytes, meta.json says"):
        verify_checkpoint(path)
    (tmp_path / name).unlink()
    with pytest.raises(CheckpointError, match=r"missing.*copy the file with the checkpoint"):
        load_checkpoint(path, Frozen(), restore_rng=False, verify=False)
