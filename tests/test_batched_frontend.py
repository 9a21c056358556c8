"""The batched front end: staged samples finished a batch at a time equal finished samples.

What must not change with it, the weights of a seeded run for any worker count and with or
without the decoded-sample cache, is held by tests/test_trainer.py and tests/test_throughput.py,
which now train through it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mmfuse.features.audio import dct_matrix, log_mel
from mmfuse.features.audio_augment import spec_augment
from mmfuse.features.audio_transform import fix_length, frame_count
from mmfuse.features.batched import Staged
from mmfuse.features.draws import RowStreams
from mmfuse.features.sample import SampleLoader
from mmfuse.features.spec import AudioSpec, ImageSpec, VideoSpec
from mmfuse.infer.batch import collate
from mmfuse.infer.dataset import Skipped, StagedView
from mmfuse.infer.engine import PredictOptions, predict_dataset
from mmfuse.model import InputConfig
from mmfuse.train import Trainer
from train_helpers import build_model, make_data, make_dataset, quick_config, tiny_model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AUDIO = AudioSpec(sample_rate=8000, duration=0.5, n_fft=256, hop_length=80, n_mels=24, n_mfcc=12)
LENGTHS = (1500, 4000, 6100, 9000)  # shorter than the clip, equal, longer, longer than the pool
VIDEO = InputConfig(
    "video",
    "video",
    "frames",
    {"frames": 2, "image": "cnn", "image_options": {"width": 8, "stages": 2, "image_size": 32}},
)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clips() -> list[torch.Tensor]:
    g = generator(7)
    t = torch.arange(max(LENGTHS)) / AUDIO.sample_rate
    return [
        (torch.sin(2 * torch.pi * (200 + 150 * k) * t[:n]) + 0.1 * torch.randn(n, generator=g))
        for k, n in enumerate(LENGTHS)
    ]


def reference_audio(spec: AudioSpec, wave: torch.Tensor, augment: bool, g) -> torch.Tensor:
    """The per-sample audio path as it was before the front end: crop, log-mel, SpecAugment,
    DCT on one clip, drawing from `g` in the same order."""
    length = round(spec.duration * spec.sample_rate)
    if augment:
        place = float(torch.rand(1, generator=g, dtype=torch.float64))
        start = int(place * max(wave.shape[-1] - length, 0))
        wave = wave[start : start + length]
    wave = fix_length(wave, length)
    db = log_mel(
        wave,
        sr=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        top_db=spec.top_db,
    )
    if augment:
        width = max(1, db.shape[-1] // 10)
        db = spec_augment(db, 2, max(1, spec.n_mels // 8), 2, width, generator=g)
    if spec.feature == "mfcc":
        db = dct_matrix(spec.n_mels, spec.n_mfcc, 0.0, db.dtype, db.device) @ db
    return db


@pytest.mark.parametrize("feature", ["log_mel", "mfcc"])
@pytest.mark.parametrize("augment", [False, True])
def test_a_batch_of_clips_of_different_lengths_equals_each_clip_alone(feature, augment):
    spec = dataclasses.replace(AUDIO, feature=feature)
    loader = SampleLoader({"a": "audio"}, {"a": spec}, augment=augment)
    waves = clips()
    staged = [loader.stage("a", w, generator(i)) for i, w in enumerate(waves)]
    assert all(s.data.shape == (1, 4000) for s in staged)
    batch = loader.finish_batch("a", Staged.cat(staged))  # B×C×T, one log-mel call
    assert batch.shape[0] == len(waves)
    assert batch.shape[-1] == frame_count(spec, 4000)
    for i, wave in enumerate(waves):
        alone = loader.finish("a", wave, generator(i))
        expected = reference_audio(spec, wave, augment, generator(i))
        torch.testing.assert_close(batch[i], expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(alone, expected, rtol=1e-4, atol=1e-4)
    if augment:  # SpecAugment masked something, and differently per clip
        masks = Staged.cat(staged).params["time_mask"]
        assert masks.any() and not all(torch.equal(masks[0], m) for m in masks[1:])


def pictures(n: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = generator(3)
    return [torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) for _ in range(n)]


@pytest.mark.parametrize("augment", [False, True])
def test_images_and_clips_stay_uint8_until_the_batch_is_normalised(augment):
    specs = {"i": ImageSpec(size=24), "v": VideoSpec(frames=3, size=16)}
    loader = SampleLoader({"i": "image", "v": "video"}, specs, augment=augment)
    raws = {"i": pictures(3, (3, 30, 40)), "v": pictures(3, (7, 3, 20, 18))}
    for name, items in raws.items():
        staged = [loader.stage(name, x, generator(i)) for i, x in enumerate(items)]
        assert all(s.data.dtype == torch.uint8 for s in staged)
        batch = loader.finish_batch(name, Staged.cat(staged))
        assert batch.dtype == torch.float32
        for i, x in enumerate(items):
            transform = loader.transforms[name]
            # The transform called on one sample, as before the front end existed.
            expected = transform(x, generator(i))
            torch.testing.assert_close(batch[i], expected, rtol=1e-5, atol=1e-5)
    spec = specs["i"]
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    plain = SampleLoader({"i": "image"}, {"i": ImageSpec(size=30, resize=30)})
    x = raws["i"][0][:, :30, 5:35]
    done = plain.finish_batch("i", plain.stage("i", x))[0]
    torch.testing.assert_close(done, (x.float() / 255 - mean) / std)


@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    """Image, audio and video rows, some cells empty (read-only: don't edit)."""
    manifest = make_data(
        tmp_path_factory.mktemp("media"), 2, modalities=("image", "audio", "video")
    )
    for row, column in ((1, "audio"), (2, "image"), (4, "video"), (5, "audio")):
        manifest.frame.at[row, column] = None
    config = tiny_model_config(manifest.classes, inputs=("image", "audio"))
    config.inputs["video"] = VIDEO
    return manifest, config, build_model(config, 0)


def staged_batch(dataset, keys, device="cpu") -> dict:
    batch = collate([StagedView(dataset)[k] for k in keys])
    return dataset.frontend()(batch["inputs"], batch["mask"], device)


@pytest.mark.parametrize("train", [False, True])
def test_a_staged_batch_with_absent_inputs_equals_the_collated_samples(gappy, train):
    manifest, config, model = gappy
    dataset = make_dataset(manifest, config, model, train=train, seed=3)
    keys = [(1, r) for r in range(len(manifest))]
    expected = collate([dataset[k] for k in keys])
    assert not expected["mask"].all()  # the batch has gaps to fill
    got = staged_batch(dataset, keys)
    for name in ("audio", "image", "video"):
        assert got[name].dtype == expected["inputs"][name].dtype
        torch.testing.assert_close(got[name], expected["inputs"][name], rtol=1e-4, atol=1e-4)


# cuFFT and pocketfft round differently: a bin far below the clip's peak can move by a few
# thousandths of a dB, so audio gets an absolute tolerance in dB.
TOLERANCE = {"audio": {"rtol": 1e-4, "atol": 1e-2}, "image": {"rtol": 1e-4, "atol": 1e-4}}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_front_end_on_cuda_equals_the_cpu(gappy, monkeypatch):
    manifest, config, model = gappy
    keys = [(0, r) for r in range(len(manifest))]
    for train in (False, True):
        dataset = make_dataset(manifest, config, model, train=train, seed=5)
        cpu = staged_batch(dataset, keys)
        batch = collate([StagedView(dataset)[k] for k in keys])
        # Pinned, as a DataLoader with pin_memory hands them over, then moved without blocking.
        pinned = {n: v.pin_memory() for n, v in batch["inputs"].items()}
        cuda = dataset.frontend()(pinned, batch["mask"], torch.device("cuda"))
        for name in ("audio", "image", "video"):
            assert cuda[name].device.type == "cuda" and cuda[name].dtype == torch.float32
            tolerance = TOLERANCE["audio" if name == "audio" else "image"]
            torch.testing.assert_close(cuda[name].cpu(), cpu[name], **tolerance)
    # The whole prediction path on the GPU: the front end, then the model, as on the CPU.
    # Convolutions in full fp32 (matmuls already are by default), so the GPU's logits can be
    # held to the CPU's closely.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    dataset = make_dataset(manifest, config, model, train=False)
    out = {
        d: predict_dataset(model, dataset, PredictOptions(device=d, batch_size=4))
        for d in ("cuda", "cpu")
    }
    for task, proba in out["cpu"]["proba"]["all"].items():
        torch.testing.assert_close(
            torch.as_tensor(out["cuda"]["proba"]["all"][task]),
            torch.as_tensor(proba),
            rtol=1e-3,
            atol=1e-4,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_fit_on_cuda_finishes_its_batches_there(gappy, tmp_path):
    manifest, config, _ = gappy
    model = build_model(config, 0)
    dataset = make_dataset(manifest, config, model, train=True, seed=0)
    # A worker, so the batches come through the DataLoader's pin-memory thread.
    options = quick_config(device="cuda", epochs=2, workers=1, profile=True, decoded_cache=False)
    result = Trainer(model, options, tmp_path / "run", model_config=config, log=print).fit(dataset)
    for record in result.history:
        assert math.isfinite(record["train_loss"])
        assert record["profile_frontend_s"] > 0
    assert next(model.parameters()).device.type == "cuda"


def staged_rows_equal(a: Staged, b: Staged) -> bool:
    return torch.equal(a.data, b.data) and all(
        torch.equal(a.params[k], b.params[k]) for k in a.params
    )


@pytest.mark.parametrize("train", [False, True])
def test_a_batch_staged_at_once_equals_each_row_staged_alone(gappy, train):
    manifest, config, model = gappy
    dataset = make_dataset(manifest, config, model, train=train, seed=3)
    keys = [(2, r) for r in range(len(manifest))]
    together = dataset.items(keys, staged=True)
    for key, item in zip(keys, together):
        alone = dataset.item(key, staged=True)
        for name in ("image", "video"):
            assert staged_rows_equal(item["inputs"][name], alone["inputs"][name]), (key, name)
    # Any other batch holding the row gives it the same crop, frames, flip and jitter.
    reordered = dataset.items(keys[::-1][:3], staged=True)
    for item in reordered:
        alone = dataset.item((2, item["row"]), staged=True)
        assert staged_rows_equal(item["inputs"]["image"], alone["inputs"]["image"])
    # ...and finished (the per-sample path), the same tensors the front end makes of them.
    finished = dataset.items(keys)
    batch = staged_batch(dataset, keys)
    for name in ("image", "video"):
        stacked = torch.stack([item["inputs"][name] for item in finished])
        torch.testing.assert_close(stacked, batch[name], rtol=1e-5, atol=1e-5)


def test_pictures_of_different_sizes_are_staged_row_by_row_with_the_same_draws():
    loader = SampleLoader({"i": "image"}, {"i": ImageSpec(size=16)}, augment=True)
    g = generator(0)
    raws = [torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)
            for h, w in ((18, 24), (20, 18), (18, 24))]  # fmt: skip
    batch = loader.stage_rows("i", raws, RowStreams(5, [10, 11, 12]))
    for i, raw in enumerate(raws):
        alone = loader.stage_rows("i", [raw], RowStreams(5, [10 + i]))
        assert staged_rows_equal(batch.row(i), alone)
    assert batch.data.shape == (3, 1, 3, 16, 16) and batch.data.dtype == torch.uint8


def test_a_value_that_fails_to_stage_skips_its_row_alone(gappy, monkeypatch):
    manifest, config, model = gappy
    dataset = make_dataset(manifest, config, model, train=True, seed=3)
    keys = [(0, r) for r in (0, 1, 3)]  # every one has its image
    expected = [dataset.item(k, staged=True) for k in keys]
    fetch = dataset.fetch

    def broken(name, value):
        raw = fetch(name, value)
        return raw[:, :0] if value == manifest.value(1, "image") else raw  # no pixels

    monkeypatch.setattr(dataset, "fetch", broken)
    got = dataset.items(keys, staged=True)
    assert isinstance(got[1], Skipped) and got[1].row == 1 and got[1].stage == "preprocess"
    for i in (0, 2):
        assert staged_rows_equal(got[i]["inputs"]["image"], expected[i]["inputs"]["image"])


def test_row_streams_are_uniform_and_each_row_its_own():
    streams = RowStreams(123, range(20_000))
    u = streams.uniform((20_000, 4))
    assert u.dtype == torch.float64 and float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    # Columns (draws within a row) and rows are uncorrelated.
    assert abs(float(torch.corrcoef(u.T)[0, 1])) < 0.03
    assert abs(float(torch.corrcoef(torch.stack([u[:-1, 0], u[1:, 0]]))[0, 1])) < 0.03
    again = RowStreams(123, [7])
    assert torch.equal(again.uniform((1, 4))[0], u[7])
    assert torch.equal(RowStreams(123, range(20_000)).row(7).uniform((1, 4))[0], u[7])
    assert not torch.equal(RowStreams(124, [7]).uniform((1, 4))[0], u[7])  # another key
    second = streams.uniform((20_000, 4))  # the next draw differs from the first
    assert not torch.equal(second[7], u[7])
    with pytest.raises(ValueError, match="20000 rows"):
        streams.uniform((3, 4))


def test_a_row_that_fails_to_finish_skips_alone(gappy, monkeypatch):
    manifest, config, model = gappy
    dataset = make_dataset(manifest, config, model, train=True, seed=3)
    keys = [(0, r) for r in (0, 1, 3)]
    expected = dataset.items(keys)
    finish, calls = dataset.loader.finish_batch, []

    def second_image_fails(name, staged):
        calls.append(name)
        if name == "image" and calls.count("image") == 2:
            raise RuntimeError("a finishing step failed")
        return finish(name, staged)

    monkeypatch.setattr(dataset.loader, "finish_batch", second_image_fails)
    got = dataset.items(keys)
    assert isinstance(got[1], Skipped) and got[1].reason == "RuntimeError" and got[1].row == 1
    for i in (0, 2):
        assert torch.equal(got[i]["inputs"]["image"], expected[i]["inputs"]["image"])


def test_rows_of_a_staged_batch_join_back_without_a_copy():
    batch = Staged(torch.arange(12).view(4, 3), {"p": torch.arange(4)})
    rows = [batch.row(i) for i in range(4)]
    assert rows[1].data.tolist() == [[3, 4, 5]] and rows[1].params["p"].tolist() == [1]
    assert Staged.cat(rows) is batch  # a dataset's whole batch, in order: the batch itself
    some = Staged.cat([rows[2], rows[0]])  # rows skipped or reordered: taken in one step
    assert some.data.tolist() == [[6, 7, 8], [0, 1, 2]] and some.params["p"].tolist() == [2, 0]
    alone = Staged(torch.full((1, 3), 9), {"p": torch.tensor([9])})  # a placeholder row
    mixed = Staged.cat([rows[3], alone])
    assert mixed.data.tolist() == [[9, 10, 11], [9, 9, 9]] and mixed.params["p"].tolist() == [3, 9]
