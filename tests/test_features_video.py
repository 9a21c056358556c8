"""Video transforms: frame sampling with temporal jitter, and parameters shared by a clip's frames."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.features import VideoSpec, frame_indices, image_transform, video_transform
from mmfuse.features.image import HorizontalFlip, Pipeline, RandomCrop
from mmfuse.features.spec import ImageSpec

SPEC = VideoSpec(frames=4, size=16)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clips(b=2, t=10, h=24, w=30, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, t, 3, h, w), dtype=torch.uint8, generator=seeded(seed))


def test_eval_indices_are_segment_centres():
    assert frame_indices(20, 4).tolist() == [2, 7, 12, 17]
    assert frame_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # short clips repeat frames
    assert frame_indices(20, 4, clips=3).shape == (3, 4)


@settings(max_examples=40, deadline=None)
@given(total=st.integers(1, 200), frames=st.integers(1, 32), seed=st.integers(0, 10**6))
def test_train_indices_jitter_inside_their_segments(total, frames, seed):
    index = frame_indices(total, frames, train=True, generator=seeded(seed), clips=3)  # 3×F
    assert index.shape == (3, frames)
    assert torch.all(index >= 0) and torch.all(index < total)
    assert torch.all(index[:, 1:] >= index[:, :-1])  # still in time order
    segment = torch.arange(frames) * total / frames
    assert torch.all(index >= segment.floor()) and torch.all(index < segment + total / frames)


def test_train_indices_are_seeded_and_vary():
    a = frame_indices(100, 8, True, seeded(0), clips=4)
    assert torch.equal(a, frame_indices(100, 8, True, seeded(0), clips=4))
    assert not torch.equal(a, frame_indices(100, 8, True, seeded(1), clips=4))
    assert any(not torch.equal(a[0], a[i]) for i in range(1, 4))  # one draw per clip


def test_eval_is_deterministic_and_shaped():
    transform = video_transform(SPEC, train=False)
    x = clips()
    out = transform(x)
    assert out.shape == (2, 4, 3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, transform(x))
    torch.testing.assert_close(transform(x[1]), out[1])  # one clip, for per-sample loading


def test_eval_frames_match_the_image_pipeline():
    x = clips()
    out = video_transform(SPEC)(x[0])  # 4 frames: indices 1, 3, 6, 8 of 10
    image = image_transform(ImageSpec(size=16, resize=SPEC.resize))
    torch.testing.assert_close(out, image(x[0, frame_indices(10, 4)]))


def test_given_indices_are_used():
    x = clips()
    indices = torch.tensor([9, 0, 5, 5])
    out = video_transform(SPEC)(x, indices=indices)
    expected = video_transform(SPEC)(x[:, indices], indices=torch.arange(4))
    torch.testing.assert_close(out, expected)


def test_flip_applies_to_every_frame_of_a_clip():
    x = clips(16, 5).float()
    out = Pipeline([HorizontalFlip(0.5)]).apply_grouped(x, seeded(0))
    flipped = [torch.equal(o, c.flip(-1)) for o, c in zip(out, x)]
    kept = [torch.equal(o, c) for o, c in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # whole clip flipped, or whole clip kept
    assert 0 < sum(flipped) < 16


def test_crop_is_the_same_window_in_every_frame():
    x = clips(3, 6, 20, 20)
    op = RandomCrop(8)
    params = op.make_params(x, seeded(1))
    out = op.transform(x, params)
    for i in range(3):
        t, left = int(params["top"][i]), int(params["left"][i])
        assert torch.equal(out[i], x[i, ..., t : t + 8, left : left + 8])


def test_train_params_drawn_once_per_clip():
    frame = clips(1, 1)[0, 0]
    x = frame.expand(3, 8, -1, -1, -1)  # three clips, each one frame repeated
    transform = video_transform(SPEC, train=True)
    out = transform(x, seeded(0))
    assert out.shape == (3, 4, 3, 16, 16)
    for clip in out:  # same crop, flip and colour for every frame of a clip
        assert all(torch.equal(clip[0], f) for f in clip[1:])
    assert not torch.equal(out[0], out[1])  # but each clip gets its own
    assert torch.equal(out, transform(x, seeded(0)))
    assert not torch.equal(out, transform(x, seeded(1)))


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="image_transform"):
        video_transform(SPEC)(torch.rand(3, 16, 16))
