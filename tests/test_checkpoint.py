"""Checkpoints: exact resume, crash safety under a real SIGKILL, pruning, and hostile files."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from mmfuse.errors import MmfuseError
from mmfuse.train.checkpoint import (
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    best_checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    mark_best,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)

VOCAB, DIM = 10, 8


class TiedNet(nn.Module):
    """Embedding and output projection share one weight; dropout draws from the torch RNG."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Linear(DIM, DIM)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(DIM, VOCAB, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.hidden(self.embed(tokens))))  # B×T×D
        return self.out(h)  # B×T×V


def make_run(seed: int):
    torch.manual_seed(seed)
    model = TiedNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.2, total_iters=2),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10),
        ],
        milestones=[2],
    )
    generators = {
        "order": torch.Generator().manual_seed(seed + 1),
        "noise": np.random.default_rng(seed + 2),
    }
    return model, optimizer, scheduler, generators


def train(model, optimizer, scheduler, generators, steps: int) -> None:
    """Every step draws from each RNG a trainer may use, so any unrestored one shows up."""
    data = torch.arange(64).reshape(16, 4) % VOCAB
    for _ in range(steps):
        batch = data[torch.randperm(16, generator=generators["order"])[:4]]  # B×T
        targets = torch.randint(0, VOCAB, batch.shape)
        scale = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        scale += float(generators["noise"].normal())
        logits = model(batch)
        loss = scale * nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rehash(checkpoint: Path) -> None:
    """Make meta.json match tampered files, as an attacker who controls the folder could."""
    meta = json.loads((checkpoint / META_FILE).read_text())
    for name, entry in meta["files"].items():
        data = (checkpoint / name).read_bytes()
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (checkpoint / META_FILE).write_text(json.dumps(meta))


def save_linear(run_dir: Path, seed: int, step: int, **kwargs) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(run_dir, nn.Linear(4, 3), epoch=0, step=step, **kwargs)


def linear_weight(seed: int, size: int = 4, out: int = 3) -> torch.Tensor:
    torch.manual_seed(seed)
    return nn.Linear(size, out).weight.detach().clone()


# --------------------------------------------------------------------------- exact resume


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    seed_globals(0)
    model, optimizer, scheduler, generators = make_run(0)
    train(model, optimizer, scheduler, generators, 3)
    path = save_checkpoint(
        tmp_path,
        model,
        optimizer,
        scheduler,
        epoch=1,
        step=3,
        best_metric=np.float64(0.5),
        extra={"sampler_epoch": 1, "history": [0.9, 0.7]},
        config={"model": {"dim": DIM}},
        generators=generators,
    )
    train(model, optimizer, scheduler, generators, 3)
    expected, expected_lr = weights(model), scheduler.get_last_lr()
    expected_draw = (random.random(), np.random.rand(), torch.rand(1))

    # A fresh process would start from other weights and other RNG states.
    seed_globals(123)
    resumed, optimizer2, scheduler2, generators2 = make_run(99)
    info = load_checkpoint(
        latest_checkpoint(tmp_path), resumed, optimizer2, scheduler2, generators=generators2
    )
    assert info["path"] == path
    assert (info["epoch"], info["step"], info["best_metric"]) == (1, 3, 0.5)
    assert info["extra"] == {"sampler_epoch": 1, "history": [0.9, 0.7]}
    assert info["config"] == {"model": {"dim": DIM}}
    train(resumed, optimizer2, scheduler2, generators2, 3)

    got = weights(resumed)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert scheduler2.get_last_lr() == expected_lr
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected_draw
    # The tie survives the load (safetensors stored the shared tensor once).
    assert resumed.out.weight is resumed.embed.weight
    with safe_open(path / MODEL_FILE, "pt") as f:
        stored = sorted(f.keys())
    assert len(stored) == len(expected) - 1, stored  # embed.weight and out.weight stored once


def test_state_file_is_plain_weights_only_data(tmp_path):
    model, optimizer, scheduler, generators = make_run(0)
    path = save_checkpoint(
        tmp_path, model, optimizer, scheduler, epoch=0, step=0, generators=generators
    )
    state = torch.load(path / STATE_FILE, weights_only=True)
    assert isinstance(state["rng"]["python"], list)
    assert set(state["rng"]["generators"]) == {"order", "noise"}
    assert json.loads((path / META_FILE).read_text())["step"] == 0


@pytest.mark.parametrize("bit_generator", ["PCG64", "MT19937", "Philox", "SFC64"])
def test_rng_state_round_trips_every_numpy_bit_generator(bit_generator):
    gen = np.random.Generator(getattr(np.random, bit_generator)(7))
    gen.normal(size=3)
    state = capture_rng_state({"g": gen})
    expected = (gen.normal(size=4), torch.rand(2), random.random(), np.random.rand())
    other = np.random.Generator(getattr(np.random, bit_generator)(8))
    restore_rng_state(state, {"g": other})
    assert np.array_equal(other.normal(size=4), expected[0])
    assert torch.equal(torch.rand(2), expected[1])
    assert (random.random(), np.random.rand()) == expected[2:]


def test_restore_names_a_generator_missing_from_the_state():
    state = capture_rng_state({"order": torch.Generator()})
    with pytest.raises(KeyError, match="'noise'"):
        restore_rng_state(state, {"noise": torch.Generator()})


def test_unsafe_extra_fails_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match=r"extra.*\['fn'\].*weights_only"):
        save_linear(tmp_path, 0, 1, extra={"fn": print})
    with pytest.raises(TypeError, match="float64"):
        save_linear(tmp_path, 0, 1, extra={"loss": np.float64(1.0)})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- crash safety

# Started as a real process and SIGKILLed at a chosen point of saving step 2 (the pause makes
# the point deterministic; the kill itself is the real thing: no cleanup, no finally blocks).
CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import torch
    from mmfuse.train import _ckpt_io, _ckpt_store, checkpoint as ckpt

    run_dir, phase, ready = sys.argv[1:4]

    def pause():
        Path(ready).write_text("paused")
        time.sleep(120)

    if phase == "model":  # killed with model.safetensors half written
        def half_written(path, model):
            from safetensors.torch import save
            data = save(model.state_dict())
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                pause()
        _ckpt_io.write_model = half_written
    elif phase == "state":  # killed with both files written but no meta.json
        write_state = _ckpt_io.write_state
        def then_pause(path, state):
            write_state(path, state)
            pause()
        _ckpt_io.write_state = then_pause
    elif phase == "rename":  # killed with a complete temp folder not yet renamed into place
        replace = os.replace
        def pause_first(src, dst):
            if Path(src).name.startswith(".tmp-"):
                pause()
            replace(src, dst)
        os.replace = pause_first
    elif phase == "prune":  # killed after the rename, before old checkpoints are removed
        _ckpt_store.prune = lambda *args: pause()

    torch.manual_seed(2)
    model = torch.nn.Linear(512, 512)
    ckpt.save_checkpoint(run_dir, model, epoch=0, step=2, keep_last=1)
    """
)
PHASES = {"model": 1, "state": 1, "rename": 1, "prune": 2}  # phase -> step latest must find


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_sigkill_mid_save_leaves_the_previous_checkpoint_usable(tmp_path):
    children = {}
    for phase in PHASES:
        run_dir = tmp_path / phase
        torch.manual_seed(1)
        save_checkpoint(run_dir, nn.Linear(512, 512), epoch=0, step=1)
        ready = tmp_path / f"{phase}.ready"
        # Started together: the torch imports overlap instead of adding up.
        children[phase] = (
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(run_dir), phase, str(ready)],
                stderr=subprocess.PIPE,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            ),
            ready,
        )
    deadline = time.monotonic() + 90
    for phase, (child, ready) in children.items():
        while not ready.exists():
            if child.poll() is not None:
                pytest.fail(f"{phase} child exited early: {child.stderr.read().decode()}")
            assert time.monotonic() < deadline, f"{phase} child never reached its kill point"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        child.stderr.close()

    for phase, step in PHASES.items():
        run_dir = tmp_path / phase
        latest = latest_checkpoint(run_dir)
        assert latest == run_dir / f"ckpt-{step:08d}", phase
        model = nn.Linear(512, 512)
        load_checkpoint(latest, model, restore_rng=False)
        assert torch.equal(model.weight, linear_weight(step, 512, 512)), phase
        names = sorted(p.name for p in run_dir.iterdir())
        # Old checkpoints go only after the new one is in place, so step 1 is still there.
        assert "ckpt-00000001" in names, phase
        assert any(n.startswith(".tmp-") for n in names) == (phase != "prune"), phase

        # The next save cleans up after the dead process and prunes as asked.
        save_linear(run_dir, 3, 3, keep_last=1)
        assert [p.name for p in run_dir.iterdir()] == ["ckpt-00000003"], phase


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fds via /proc")
def test_save_syncs_files_then_folder_then_renames_then_syncs_parent(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", Path(dst).name))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    save_linear(tmp_path, 1, 1)
    assert [name for _, name in events[:3]] == [MODEL_FILE, STATE_FILE, META_FILE]
    assert events[3][0] == "fsync" and events[3][1].startswith(".tmp-ckpt-00000001-")
    assert events[4:6] == [("replace", "ckpt-00000001"), ("fsync", tmp_path.name)]


def test_failed_save_removes_its_temp_folder_and_keeps_the_old(tmp_path, monkeypatch):
    save_linear(tmp_path, 1, 1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mmfuse.train._ckpt_io.write_state", disk_full)
    # One sentence instead of a traceback: the folder, the space needed and free, what was kept.
    with pytest.raises(CheckpointError) as caught:
        save_linear(tmp_path, 2, 2, keep_last=1)
    number = r"\d+\.\d"
    expected = (
        re.escape(f"{tmp_path}: no space left on the device to write checkpoint ckpt-00000002 (")
        + f"it needs about {number} kB, {number} [kMG]B free"
        + re.escape(
            f"); the last checkpoint, {tmp_path / 'ckpt-00000001'}, is untouched; free some "
            "space or train into another --out, then run again with --resume"
        )
    )
    assert re.fullmatch(expected, str(caught.value)), str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001"]


def test_latest_skips_temp_incomplete_and_damaged_folders(tmp_path):
    good = save_linear(tmp_path, 1, 1, keep_last=None)
    # A complete checkpoint under a temp name: a save that was still to be renamed.
    save_linear(tmp_path, 9, 9, keep_last=None).rename(tmp_path / ".tmp-ckpt-00000009-1-ab-h")
    incomplete = save_linear(tmp_path, 5, 5, keep_last=None)
    (incomplete / META_FILE).unlink()
    damaged = save_linear(tmp_path, 7, 7, keep_last=None)
    data = bytearray((damaged / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped bit: only the hash can tell
    (damaged / MODEL_FILE).write_bytes(bytes(data))
    (tmp_path / "ckpt-notastep").mkdir()
    (tmp_path / "best-00000008").mkdir()

    assert latest_checkpoint(tmp_path) == good
    assert latest_checkpoint(tmp_path, verify=False) == damaged
    assert latest_checkpoint(tmp_path / "missing") is None
    assert best_checkpoint(tmp_path) is None


def test_keep_last_prunes_the_oldest_after_each_save(tmp_path):
    for step in range(1, 6):
        save_linear(tmp_path, step, step, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004", "ckpt-00000005"]
    for step in range(6, 9):
        save_linear(tmp_path, step, step, keep_last=None)
    assert len(list(tmp_path.iterdir())) == 5
    # Re-saving a step replaces it whole.
    save_linear(tmp_path, 42, 8, keep_last=None)
    model = nn.Linear(4, 3)
    load_checkpoint(latest_checkpoint(tmp_path), model, restore_rng=False)
    assert torch.equal(model.weight, linear_weight(42))
    with pytest.raises(ValueError, match="keep_last"):
        save_linear(tmp_path, 0, 9, keep_last=0)


def test_mark_best_hard_links_and_survives_pruning(tmp_path):
    first = save_linear(tmp_path, 1, 1, keep_last=1)
    assert mark_best(first) == tmp_path / "best-00000001"
    second = save_linear(tmp_path, 2, 2, keep_last=1)
    best = mark_best(second)
    save_linear(tmp_path, 3, 3, keep_last=1)  # prunes ckpt-2, whose files best shares
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-00000002", "ckpt-00000003"]
    assert best_checkpoint(tmp_path) == best
    model = nn.Linear(4, 3)
    assert load_checkpoint(best, model, restore_rng=False)["step"] == 2
    assert torch.equal(model.weight, linear_weight(2))


def test_save_with_tag_writes_a_separate_series(tmp_path):
    save_linear(tmp_path, 1, 1)
    best = save_linear(tmp_path, 2, 2, tag="best", keep_last=1)
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-00000001"
    assert best_checkpoint(tmp_path) == best
    with pytest.raises(ValueError, match="tag"):
        save_linear(tmp_path, 0, 3, tag="Best-1")


# --------------------------------------------------------------------------- hostile files


class _WritesMarker:
    """Unpickling this would call open(marker, "w"): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_truncated_model_file_is_a_checkpoint_error(tmp_path):
    path = save_linear(tmp_path, 1, 1)
    data = (path / MODEL_FILE).read_bytes()
    (path / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{MODEL_FILE}.*truncated") as caught:
        load_checkpoint(path, nn.Linear(4, 3))
    assert isinstance(caught.value, MmfuseError)
    assert "older checkpoint" in str(caught.value)
    # Even when meta.json is made to agree, safetensors refuses it cleanly.
    rehash(path)
    with pytest.raises(CheckpointError, match=MODEL_FILE):
        load_checkpoint(path, nn.Linear(4, 3))


def test_garbage_state_file_is_a_checkpoint_error(tmp_path):
    path = save_linear(tmp_path, 1, 1)
    size = (path / STATE_FILE).stat().st_size
    (path / STATE_FILE).write_bytes(os.urandom(size))
    with pytest.raises(CheckpointError, match="sha256"):
        verify_checkpoint(path)
    rehash(path)
    with pytest.raises(CheckpointError, match=rf"{STATE_FILE}.*weights_only"):
        load_checkpoint(path, nn.Linear(4, 3))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_never_runs(tmp_path, writer):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_WritesMarker(control)))
    assert control.exists(), "the payload must really run code when unpickled"
    path = save_linear(tmp_path / "run", 1, 1)
    marker = tmp_path / "pwned"
    payload = {"format": "mmfuse-checkpoint", "rng": _WritesMarker(marker)}
    with open(path / STATE_FILE, "wb") as f:
        if writer == "pickle":
            pickle.dump(payload, f, protocol=2)
        else:
            torch.save(payload, f)
    rehash(path)  # the attacker controls the whole folder, hashes included
    assert latest_checkpoint(tmp_path / "run") == path  # hashes agree: only loading can tell
    with pytest.raises(CheckpointError, match=rf"{STATE_FILE}.*weights_only") as caught:
        load_checkpoint(path, nn.Linear(4, 3))
    assert not marker.exists()
    assert "weights_only=False" not in str(caught.value)


def test_foreign_and_incomplete_folders_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        load_checkpoint(tmp_path / "nope", nn.Linear(4, 3))
    path = save_linear(tmp_path, 1, 1)
    with pytest.raises(CheckpointError, match="run folder"):
        load_checkpoint(tmp_path, nn.Linear(4, 3))

    (path / META_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not an mmfuse checkpoint"):
        verify_checkpoint(path)
    (path / META_FILE).write_text("{truncated")
    with pytest.raises(CheckpointError, match="unreadable"):
        verify_checkpoint(path)
    (path / META_FILE).unlink()
    with pytest.raises(CheckpointError, match="did not finish"):
        verify_checkpoint(path)


def test_wrong_model_or_optimizer_is_a_checkpoint_error(tmp_path):
    model, optimizer, scheduler, _ = make_run(0)
    path = save_checkpoint(tmp_path, model, optimizer, epoch=0, step=1)
    with pytest.raises(CheckpointError, match=r"Linear.*Missing key.*config"):
        load_checkpoint(path, nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match="no scheduler state"):
        load_checkpoint(path, model, optimizer, scheduler)
    other = torch.optim.AdamW([nn.Parameter(torch.zeros(2))])
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_checkpoint(path, model, other)
