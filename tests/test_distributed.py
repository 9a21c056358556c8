"""Training under torchrun: two gloo processes on this CPU against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rank_helpers import run_ranks
from train_helpers import make_data

TESTS = Path(__file__).parent

SCRIPT = r"""
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from train_helpers import build_model, make_dataset, quick_config, tiny_model_config
from mmfuse.data.manifest import read_manifest
from mmfuse.train import Trainer

data, run, epochs, resume = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
train = read_manifest(data / "train" / "manifest.csv")
val = read_manifest(data / "val" / "manifest.csv")
config = tiny_model_config(train.classes)
model = build_model(config, seed=0)
cfg = quick_config(epochs=epochs, batch_size=8, lr=1e-2, augment=False, cache_features=False)
trainer = Trainer(model, cfg, run, model_config=config)
result = trainer.fit(
    make_dataset(train, config, model, train=True, augment=False),
    make_dataset(val, config, model, train=False),
    resume=resume,
)
rank = int(os.environ.get("RANK", "0"))
(run / f"result-{rank}.json").write_text(json.dumps({
    "history": [{k: v for k, v in r.items() if k not in ("train_time", "samples_per_s")}
                for r in result.history],
    "world": trainer.dist.world,
    # Parameters only: BatchNorm running statistics are each rank's own between broadcasts.
    "weights_sum": float(sum(p.double().sum() for p in model.parameters())),
}))
"""


def launch(tmp_path: Path, data: Path, run: Path, procs: int, epochs: int, resume=False):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    args = [str(script), str(TESTS), str(data), str(run), str(epochs), "1" if resume else "0"]
    code, err = run_ranks(args, procs, tmp_path / f"logs-{run.name}-{epochs}")
    assert code == 0, err[-3000:]
    return json.loads((run / "result-0.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    make_data(root / "train", 16, seed=0)
    make_data(root / "val", 4, seed=1)
    return root


def test_two_gloo_processes_match_one_within_noise_and_resume(data, tmp_path):
    one = launch(tmp_path, data, tmp_path / "one", 1, 6)
    two = launch(tmp_path, data, tmp_path / "two", 2, 6)
    assert one["world"] == 1 and two["world"] == 2
    # Both ranks end with the same weights (DDP keeps them in sync).
    rank1 = json.loads((tmp_path / "two" / "result-1.json").read_text())
    assert rank1["weights_sum"] == pytest.approx(two["weights_sum"], rel=1e-6)
    # Same seed, same data order and global batch. What differs: each rank's BatchNorm sees half
    # a batch (its own statistics), float sums run in another order, and modality dropout and
    # mixup would draw per rank. Over a few dozen steps on 12 validation rows that is worth about
    # one row, so: validation accuracy within 0.17 (2 of 12 rows), both runs clearly learned.
    last_one, last_two = one["history"][-1], two["history"][-1]
    assert abs(last_one["val_accuracy"] - last_two["val_accuracy"]) <= 0.17, (one, two)
    for run in (one, two):
        assert run["history"][-1]["val_accuracy"] >= 0.75, run
        assert run["history"][-1]["train_loss"] < 0.5 * run["history"][0]["train_loss"], run
    # Rank 0 alone writes: one metrics line per epoch, no duplicate checkpoints.
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]
    # Resume in a distributed run: every rank loads the same checkpoint and goes on.
    more = launch(tmp_path, data, tmp_path / "two", 2, 7, resume=True)
    assert [r["epoch"] for r in more["history"]] == [1, 2, 3, 4, 5, 6, 7]
    assert more["history"][:6] == two["history"]


def test_mmfuse_train_runs_unchanged_under_torchrun(data, tmp_path):
    from train_helpers import SMALL_ENCODERS

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 1, "batch_size": 8, "encoders": SMALL_ENCODERS}))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mmfuse",
        "train",
        str(data / "train" / "manifest.csv"),
        "--val",
        str(data / "val" / "manifest.csv"),
        "--config",
        str(config),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    # Evaluated with both ranks, written once by rank 0: a model folder with its report.
    for name in ("config.json", "model.safetensors", "report.md", "metrics.json"):
        assert (out / name).is_file(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert done.stdout.count("model folder:") == 1
