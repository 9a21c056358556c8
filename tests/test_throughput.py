"""The training data path: the per-stage profile, workers="auto" and the decoded-sample cache.

Speed itself is measured by benchmarks/throughput.py and benchmarks/default_run.py, never
asserted here; these tests hold what the speed-ups must not change (weights, draws) and what
they must report.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from mmfuse.cli import build_parser
from mmfuse.features import sample as sample_module
from mmfuse.features.sample import SampleLoader
from mmfuse.features.spec import AudioSpec, VideoSpec
from mmfuse.infer.batch import auto_workers, resolve_workers
from mmfuse.infer.dataset import Skipped
from mmfuse.model import InputConfig
from mmfuse.model.config import ConfigError
from mmfuse.train import Trainer
from mmfuse.train.config import TrainConfig
from mmfuse.train.decoded_cache import DecodedStore, attach_decoded_stores, read_entry
from train_helpers import (
    build_model,
    make_data,
    make_dataset,
    quick_config,
    state_dicts_equal,
    tiny_model_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VIDEO = InputConfig(
    "video",
    "video",
    "frames",
    {"frames": 2, "image": "cnn", "image_options": {"width": 8, "stages": 2, "image_size": 32}},
)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Image, audio, video and text rows (read-only: don't edit)."""
    root = tmp_path_factory.mktemp("media")
    return make_data(root, 3, modalities=("image", "audio", "video", "text"))


def fit(manifest, run_dir, *, log=print, **train):
    config = tiny_model_config(manifest.classes)
    config.inputs["video"] = VIDEO
    model = build_model(config, 0)
    dataset = make_dataset(manifest, config, model, train=True, seed=0)
    trainer = Trainer(model, quick_config(**train), run_dir, model_config=config, log=log)
    return trainer.fit(dataset), model, dataset


def count_decodes(monkeypatch) -> list[str]:
    calls = []
    decode = SampleLoader.decode

    def counted(self, name, value):
        calls.append(name)
        return decode(self, name, value)

    monkeypatch.setattr(SampleLoader, "decode", counted)
    return calls


def test_the_decoded_cache_changes_no_weight_and_spares_later_decodes(media, tmp_path, monkeypatch):
    calls = count_decodes(monkeypatch)
    options = {"epochs": 3, "workers": 0, "cache_dir": str(tmp_path / "cache")}
    _, plain, _ = fit(media, tmp_path / "plain", decoded_cache=False, **options)
    decoded_without = len(calls)
    calls.clear()
    result, cached, dataset = fit(media, tmp_path / "cached", **options)
    assert state_dicts_equal(plain.state_dict(), cached.state_dict()) == []
    assert not result.skipped
    # Epoch 1 decoded each media file once; epochs 2 and 3 read the store (text is a cell, not
    # a file: it is never stored).
    rows, media_files = len(media), 3 * len(media)
    # The preflight and epoch 1 decode all four inputs, epochs 2 and 3 the text alone.
    assert len(calls) == 2 * 4 * rows + 2 * rows
    assert decoded_without - len(calls) == 2 * media_files
    assert sorted(dataset.decoded) == ["audio", "image", "video"]
    assert all(len(store) == rows for store in dataset.decoded.values())
    # ...and another seed's draws differ, so the equality above can fail.
    _, other, _ = fit(media, tmp_path / "other", seed=1, **options)
    assert state_dicts_equal(plain.state_dict(), other.state_dict()) != []


def test_a_damaged_store_entry_is_decoded_again(media, tmp_path):
    cache = str(tmp_path / "cache")
    _, _, dataset = fit(media, tmp_path / "a", epochs=1, workers=0, cache_dir=cache)
    store = dataset.decoded["image"]
    entry = next(store.dir.glob("*/*.npy"))
    entry.write_bytes(entry.read_bytes()[:40])  # a copy cut short
    value = media.value(0, "image")
    again = store.fetch(value, lambda: dataset.loader.decode("image", value))
    assert again.dtype == torch.uint8 and again.ndim == 3


def dataset_with_stores(media, cache_dir, **options):
    """A training dataset of the tiny model over `media`, its decoded-sample stores attached."""
    config = tiny_model_config(media.classes)
    dataset = make_dataset(media, config, build_model(config, 0), train=True, seed=0, **options)
    attach_decoded_stores([dataset], quick_config(cache_dir=str(cache_dir)), print)
    return dataset


def test_deleting_the_store_while_it_fills_costs_entries_not_the_run(media, tmp_path):
    dataset = dataset_with_stores(media, tmp_path)
    store = dataset.decoded["image"]
    store.memory_bytes = 0  # the files alone
    value = media.value(0, "image")

    def decode():
        return dataset.loader.decode("image", value)

    first = store.fetch(value, decode)
    shutil.rmtree(store.dir)  # "deleting the folder is always safe"
    again = store.fetch(value, decode)  # its folder is gone: read, not stored, no error
    assert torch.equal(again, first) and not store.dir.exists()
    store.fetch(value, decode)  # the next write makes the folders again
    assert len(store) == 1


def test_entries_kept_in_memory_are_never_written_into(media, tmp_path):
    """Later epochs get the very tensors an earlier one read: no transform may change them."""
    _, _, dataset = fit(media, tmp_path / "a", epochs=3, workers=0, cache_dir=str(tmp_path))
    for name, store in dataset.decoded.items():
        assert len(store._memory) == len(media), name
        for key, held in store._memory.items():
            on_disk = read_entry(store.dir / key[:1] / f"{key}.npy")
            assert torch.equal(held, torch.from_numpy(on_disk)), name
    # Under its budget a store keeps nothing more, and still serves every file.
    store = dataset.decoded["image"]
    fresh = DecodedStore(store.dir.parent, store.dir.name, store.description, memory_bytes=0)
    value = media.value(0, "image")
    assert torch.equal(fresh.fetch(value, None), dataset.loader.decode("image", value))
    assert fresh._memory == {}


def test_a_held_entry_is_found_by_stat_alone_until_its_file_changes(media, tmp_path):
    dataset = dataset_with_stores(media, tmp_path)
    store = dataset.decoded["image"]
    value = str(tmp_path / "picture.png")  # a copy: the media are shared with other tests
    shutil.copyfile(media.value(0, "image"), value)
    assert store.held(value) is None  # nothing read yet
    first = store.fetch(value, lambda: dataset.loader.decode("image", value))
    assert store.held(value) is first
    # Another picture written over the file: held no longer answers, fetch decodes it afresh.
    other = media.value(1, "image")
    shutil.copyfile(other, value)
    assert store.held(value) is None
    again = store.fetch(value, lambda: dataset.loader.decode("image", value))
    assert torch.equal(again, dataset.loader.decode("image", other))
    assert store.held(value) is again
    Path(value).unlink()
    assert store.held(value) is None  # a file gone is not held: fetch names the error


def test_the_augmentation_still_varies_per_epoch_from_the_store(media, tmp_path):
    config = tiny_model_config(media.classes)
    config.inputs["video"] = VIDEO
    model = build_model(config, 0)
    dataset = make_dataset(media, config, model, train=True, seed=0)
    attach_decoded_stores([dataset], quick_config(cache_dir=str(tmp_path)), print)
    first, again, later = dataset[(0, 2)], dataset[(0, 2)], dataset[(1, 2)]
    for name in ("image", "audio", "video"):
        assert torch.equal(first["inputs"][name], again["inputs"][name])
        assert not torch.equal(first["inputs"][name], later["inputs"][name]), name


def test_a_store_over_the_limit_is_turned_off_with_one_sentence(media, tmp_path):
    config = tiny_model_config(media.classes)
    model = build_model(config, 0)
    dataset = make_dataset(media, config, model, train=True)
    lines = []
    limit = quick_config(cache_dir=str(tmp_path), decoded_cache_max_gb=1e-6)
    attach_decoded_stores([dataset], limit, lines.append)
    assert dataset.decoded == {}
    assert len(lines) == 2  # image and audio; text is never stored
    assert "column 'audio'" in lines[0] and "column 'image'" in lines[1]
    assert "MB in" in lines[0] and "raise decoded_cache_max_gb" in lines[0]


def test_the_profile_times_every_stage_of_every_epoch(media, tmp_path):
    lines = []
    result, _, _ = fit(media, tmp_path / "run", epochs=2, workers=0, profile=True, log=lines.append)
    for record in result.history:
        for stage in ("read", "preprocess", "wait", "frontend", "forward", "backward", "optimizer"):
            assert record[f"profile_{stage}_s"] > 0, stage
        assert 0 < record["model_busy"] <= 1
    profiles = [line for line in lines if "profile, epoch" in line]
    assert len(profiles) == 2 and "model busy" in profiles[0] and "read/decode" in profiles[0]
    assert "batched preprocessing" in profiles[0]


def test_without_the_profile_epochs_carry_no_profile(media, tmp_path):
    result, _, _ = fit(media, tmp_path / "run", epochs=1, workers=0)
    assert not [k for k in result.history[0] if k.startswith("profile_") or k == "model_busy"]


def test_auto_workers_leave_a_core_to_the_model_and_skip_small_datasets():
    assert auto_workers(10_000, cores=2) == 1
    assert auto_workers(10_000, cores=8) == 7
    assert auto_workers(10_000, cores=8, trains_on_cpu=True) == 7
    assert auto_workers(10_000, cores=1) == 0
    # A model training on a 2-core CPU takes both cores: its loading stays in its process.
    assert auto_workers(10_000, cores=2, trains_on_cpu=True) == 0
    assert resolve_workers("auto", 10_000, trains_on_cpu=True) == (
        0 if len(os.sched_getaffinity(0)) <= 2 else len(os.sched_getaffinity(0)) - 1
    )
    assert auto_workers(100, cores=8) == 0  # starting workers would cost more than it saves
    assert resolve_workers(3, 10) == 3
    assert TrainConfig.from_dict(TrainConfig().to_dict()).workers == "auto"
    for bad in (-1, "many", 1.5, True):
        with pytest.raises(ConfigError, match="workers must be 'auto' or an int"):
            TrainConfig(workers=bad)


def test_the_train_command_takes_profile_and_auto_workers():
    parser = build_parser()
    args = parser.parse_args(["train", "m.csv", "--profile", "--workers", "auto"])
    assert args.profile and args.workers == "auto"
    assert parser.parse_args(["train", "m.csv", "--workers", "2"]).workers == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "m.csv", "--workers", "-1"])


def test_decode_is_deterministic_and_finish_draws(media):
    video = media.value(0, "video")
    loader = SampleLoader({"v": "video"}, {"v": VideoSpec(frames=2, size=16)}, augment=True)
    pool = loader.decode("v", video)
    assert torch.equal(pool, loader.decode("v", video)) and pool.dtype == torch.uint8
    assert pool.shape[0] > 2  # a pool of frames to draw the epoch's two from
    draws = [loader.finish("v", pool, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert draws[0].shape == (2, 3, 16, 16)
    audio = SampleLoader({"a": "audio"}, {"a": AudioSpec(duration=0.1, feature="waveform")})
    clip = audio.load("a", media.value(0, "audio"))
    assert clip.shape == (1600,)


def test_frames_larger_than_the_encoder_wants_are_scaled_in_the_decoder():
    assert sample_module.decode_size(480, 640, 55) == (55, 73)
    assert sample_module.decode_size(640, 480, 55) == (73, 55)
    assert sample_module.decode_size(48, 48, 55) is None


def test_auto_precision_is_bf16_with_channels_last_only_where_the_device_has_bf16(monkeypatch):
    from mmfuse.train import config as config_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(config_module, "bf16_supported", lambda device: True)
    fast = TrainConfig(precision="auto").for_device(cpu)
    assert (fast.precision, fast.channels_last) == ("bf16", True)
    monkeypatch.setattr(config_module, "bf16_supported", lambda device: False)
    plain = TrainConfig(precision="auto").for_device(cpu)
    assert (plain.precision, plain.channels_last) == ("fp32", False)
    assert TrainConfig(precision="fp32").for_device(cpu).precision == "fp32"
    assert TrainConfig().precision == "auto"  # the default since the 3-seed avdigits comparison


def test_a_file_that_never_finishes_reading_is_timed_out_with_the_store_on(media, tmp_path):
    """The store hashes a file before it can look it up: that read is bounded like a decode."""
    dataset = dataset_with_stores(media, tmp_path, decode_timeout=0.5)
    stuck = tmp_path / "stuck.png"
    os.mkfifo(stuck)  # opening it for reading blocks until a writer comes: none will
    dataset.cells["image"][1] = str(stuck)
    started = time.monotonic()
    items = dataset.items([(0, 0), (0, 1), (0, 2)], staged=True)
    assert time.monotonic() - started < 10
    assert isinstance(items[1], Skipped) and items[1].stage == "timeout"
    assert not isinstance(items[0], Skipped) and not isinstance(items[2], Skipped)
