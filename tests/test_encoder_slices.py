"""Inference on a CPU in slices (`encoders.base.in_slices`): the same features as one call,
one call where slicing would change or fix something (training, tracing), and the slices'
size following the encoder's widest activation. Also: `sound-cnn` leaves out the blocks that
are only padding; picture batches channels-last on a CPU; EfficientNet's in-place
activations."""

from __future__ import annotations

import pytest
import torch

from mmfuse.encoders import base, build
from mmfuse.encoders.base import SLICE_BYTES, in_slices


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(len(x))
        return x * 2


def test_a_large_eval_batch_runs_in_slices_under_the_budget():
    module = Counting().eval()
    x = torch.randn(10, 3)
    per_row = SLICE_BYTES // (4 * 3)  # three rows a slice
    torch.testing.assert_close(in_slices(module, module, x, per_row), x * 2)
    assert module.calls == [3, 3, 3, 1]


@pytest.mark.parametrize("case", ["training", "small", "traced"])
def test_one_call_when_training_small_or_traced(case):
    module = Counting().train(case == "training")
    x = torch.randn(10, 3)
    per_row = 4 if case == "small" else SLICE_BYTES
    if case == "traced":
        torch.jit.trace(lambda t: in_slices(module, module, t, per_row), x, check_trace=False)
    else:
        in_slices(module, module, x, per_row)
    assert module.calls == [10]


def test_autocast_halves_the_bytes_of_an_element():
    x = torch.randn(2, 3)
    assert base.activation_bytes(x) == 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert base.activation_bytes(x) == 2


def test_efficientnet_lite0_widest_activation_is_its_second_stage_expansion():
    # 16 channels × 6 at stride 2: 96 / 4 elements per input pixel.
    encoder = build("image", "efficientnet-lite0", pretrained=False)
    assert encoder.widest == 24


@pytest.mark.parametrize(
    ("modality", "name", "options", "shape"),
    [
        ("image", "efficientnet-lite-tiny", {"features": "stages", "grid": 2}, (7, 3, 64, 64)),
        ("image", "resnet-tiny", {}, (7, 3, 64, 64)),
        ("audio", "sound-cnn-tiny", {"width": 4, "duration": 5.0}, (5, 5 * 44100)),
    ],
)
def test_sliced_features_equal_one_call(monkeypatch, modality, name, options, shape):
    torch.manual_seed(0)
    encoder = build(modality, name, **options).eval()
    x = torch.rand(shape) - 0.5
    with torch.no_grad():
        whole = encoder(x)
        monkeypatch.setattr(base, "SLICE_BYTES", 1)  # one row a slice
        sliced = encoder(x)
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)


def test_sound_cnn_skips_blocks_that_are_only_padding():
    torch.manual_seed(0)
    encoder = build("audio", "sound-cnn-tiny", width=4, duration=5.0).eval()
    seen: list[int] = []
    encoder.net.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    x = torch.zeros(3, 5 * 44100)
    x[:, :44100] = torch.randn(3, 44100) * 0.1  # one second of sound, then padding
    with torch.no_grad():
        pooled = encoder(x)
        tokens = encoder.forward_tokens(x)
    assert seen == [3 * 1, 3 * tokens.shape[1]]  # one block a clip, then every block
    torch.testing.assert_close(pooled, tokens[:, 0])


class Layout(torch.nn.Module):
    """Records whether each call got a channels-last batch; returns it as a map."""

    def __init__(self):
        super().__init__()
        self.channels_last: list[bool] = []

    def forward(self, x):
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        return x + 1


@pytest.mark.parametrize("training", [False, True])
def test_eval_on_a_cpu_computes_image_batches_channels_last(training):
    module = Layout().train(training)
    x = torch.randn(4, 3, 8, 8)
    out = in_slices(module, module, x, per_row=1)
    assert module.channels_last == [not training]
    # Handed back in the ordinary layout, whatever the layers produced.
    assert out.is_contiguous() and torch.equal(out, x + 1)
    in_slices(module, module, torch.randn(4, 3), per_row=1)  # not an image batch: as it is
    assert module.channels_last[-1] is False


@pytest.mark.parametrize("name", ["resnet-tiny", "efficientnet-lite-tiny"])
def test_channels_last_features_equal_the_ordinary_layout(name):
    torch.manual_seed(0)
    encoder = build("image", name).eval()
    x = torch.rand(3, 3, 64, 64) - 0.5
    with torch.no_grad():
        got = encoder(x)
        ordinary = encoder._feature_map(x).mean(dim=(2, 3))  # bypasses in_slices
    torch.testing.assert_close(got, ordinary, rtol=1e-5, atol=1e-5)


def test_efficientnet_in_place_activations_keep_training_gradients(monkeypatch):
    from types import SimpleNamespace

    from mmfuse.encoders import efficientnet

    def gradients() -> list[torch.Tensor]:
        torch.manual_seed(0)
        encoder = build("image", "efficientnet-lite-tiny").train()
        encoder(torch.rand(4, 3, 64, 64)).square().mean().backward()
        return [p.grad.clone() for p in encoder.parameters()]

    in_place = gradients()
    functional = efficientnet.F
    relu6 = functional.relu6
    # The same network with every activation out of place.
    without = SimpleNamespace(**vars(functional))
    without.relu6 = lambda x, inplace=False: relu6(x)
    monkeypatch.setattr(efficientnet, "F", without)
    for got, expected in zip(in_place, gradients(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sound_cnn_in_place_activations_keep_training_gradients(monkeypatch):
    from mmfuse.encoders import sound_cnn

    def gradients() -> list[torch.Tensor]:
        torch.manual_seed(0)
        encoder = build("audio", "sound-cnn-tiny", width=4, duration=1.0).train()
        encoder(torch.rand(2, 44100) - 0.5).square().mean().backward()
        return [p.grad.clone() for p in encoder.parameters()]

    in_place = gradients()
    monkeypatch.setattr(sound_cnn.torch, "relu_", torch.relu)  # every activation out of place
    for got, expected in zip(in_place, gradients(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sound_cnn_turns_channels_last_after_its_first_convolution(monkeypatch):
    from mmfuse.encoders.sound_cnn import ConvBlock

    torch.manual_seed(0)
    block = ConvBlock(1, 8).eval()
    x = torch.rand(2, 1, 20, 16)
    with torch.no_grad():
        assert block(x).is_contiguous(memory_format=torch.channels_last)
        assert block.train()(x).is_contiguous()  # training: as it comes
    encoder = build("audio", "sound-cnn-tiny", width=4, duration=1.0).eval()
    clips = torch.rand(3, 44100) - 0.5
    with torch.no_grad():
        got = encoder(clips)
        monkeypatch.setattr(base, "CPU_CHANNELS_LAST", False)
        ordinary = encoder(clips)
    torch.testing.assert_close(got, ordinary, rtol=1e-5, atol=1e-5)
