"""A fit's batches as one stream (`train.batches`): what each epoch gets, and that loading goes on
into the next epoch while the training process validates."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from mmfuse.distributed import DistInfo
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.train import Trainer
from mmfuse.train.batches import FitBatches, batches_per_epoch, epoch_batches
from train_helpers import build_model, make_data, make_dataset, quick_config, tiny_model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ONE = DistInfo()


def test_the_stream_is_every_epoch_in_order_and_a_resume_starts_mid_epoch():
    n, size = 23, 5  # 5 batches an epoch, the last one short
    epochs = [epoch_batches(n, 7, e, size, ONE) for e in range(3)]
    assert all(len(b) == batches_per_epoch(n, size, ONE) == 5 for b in epochs)
    assert sorted(r for b in epochs[1] for _, r in b) == list(range(n))
    assert {e for b in epochs[2] for e, _ in b} == {2}
    assert epochs[0] != epochs[1]  # each epoch its own order
    stream = FitBatches(n, 7, size, ONE, epochs=3)
    assert list(stream) == epochs[0] + epochs[1] + epochs[2] and len(stream) == 15
    resumed = FitBatches(n, 7, size, ONE, epochs=3, start_epoch=1, first=3)
    assert list(resumed) == epochs[1][3:] + epochs[2] and len(resumed) == 7


def test_ranks_share_an_epoch_in_equal_numbers_of_batches():
    ranks = [DistInfo(rank=r, world=3, local_rank=r) for r in range(3)]
    shares = [epoch_batches(10, 0, 0, 2, info) for info in ranks]
    assert {len(s) for s in shares} == {batches_per_epoch(10, 2, ranks[0])} == {2}
    rows = [r for s in shares for b in s for _, r in b]
    assert set(rows) == set(range(10)) and len(rows) == 12  # padded as DistributedSampler


class _Logged(MultimodalDataset):
    """Appends the `(epoch, row)` of every item it reads to a file (workers are processes)."""

    log_path = None

    def items(self, keys, *args, **kwargs):
        with open(self.log_path, "a") as f:
            f.writelines(f"{key[0]} {key[1]} {time.monotonic()}\n" for key in keys)
        return super().items(keys, *args, **kwargs)


class _SlowValidation(Trainer):
    """Validation takes 1 s and never improves."""

    ends: list[float]

    def validate(self, dataset):
        self.ends.append(time.monotonic())  # the epoch's training is over
        time.sleep(1.0)
        return {"val_loss": 1.0}


def test_workers_read_the_next_epoch_while_this_one_validates(tmp_path):
    manifest = make_data(tmp_path / "data", 4, modalities=("image",))
    config = tiny_model_config(manifest.classes, inputs=("image",))
    model = build_model(config, 0)
    train = make_dataset(manifest, config, model, train=True, seed=0)
    train.__class__ = _Logged
    train.log_path = tmp_path / "reads.txt"
    val = make_dataset(manifest, config, model, train=False)
    cfg = quick_config(epochs=3, workers=1, patience=1, monitor="val_loss")
    trainer = _SlowValidation(model, cfg, tmp_path / "run", model_config=config, log=lambda s: 0)
    trainer.ends = []
    result = trainer.fit(train, val)
    reads = [line.split() for line in train.log_path.read_text().splitlines()]
    # Epoch 2's first batch was read ahead, before epoch 1's (1 s) validation ended, not after.
    first_of_epoch_2 = min(float(t) for e, _, t in reads if e == "1")
    assert first_of_epoch_2 < trainer.ends[0] + 1.0
    # Patience 1 stops after epoch 2 with epoch 3's batches read ahead; the fit still ends
    # its worker.
    assert result.stopped_early and len(result.history) == 2
    assert multiprocessing.active_children() == []
