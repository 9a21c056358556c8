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
from mmfuse.features.sample import SampleLoader
from mmfuse.features.spec import AudioSpec, ImageSpec, VideoSpec
from mmfuse.infer.batch import collate
from mmfuse.infer.dataset import StagedView
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
