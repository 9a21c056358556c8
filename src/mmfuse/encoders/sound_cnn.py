"""The aiSFX sound-effects CNN (Ma and Lerch, ISMIR 2022), pretrained, on 44.1 kHz waveforms.

The network is the DCASE cross-task baseline CNN (Kong et al., 2018): four blocks of two 3×3
conv + BatchNorm + ReLU layers (64 → 512 channels), 2×2 max-pooling after the first three, then
the mean over mel bands and the max over time. It embeds a block of 100 log-mel frames (2.32 s)
as 512 numbers; blocks start every 50 frames, and a clip is the mean of its blocks.

The weights come from the `aisfx` package (installed by `make setup`, without its pinned
dependencies; only its checkpoint file is read). They are CC BY 4.0, © 2022 A.B. Ma and
A. Lerch. The front end is `mmfuse.features.sfx_mel`, the log-mel chain the weights were
trained on.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmfuse.encoders.base import (
    Encoder,
    EncoderError,
    check_shape,
    in_cpu_layout,
    in_slices,
    register,
)
from mmfuse.features.sfx_mel import FRAME, HOP, N_MELS, SAMPLE_RATE, log_mel_frames, sliding
from mmfuse.features.spec import AudioSpec

BLOCK = 100  # frames per embedded block
BLOCK_HOP = 50
# aiSFX scales log-mels by the largest value of its training set ('original' min-max, min 0).
SPEC_MAX = 9.457798957824707
CHECKPOINT = "models/checkpoint.pth"  # inside the installed aisfx package
WHAT = "audio encoder 'sound-cnn' (44.1 kHz waveform)"
INSTALL_HINT = "run `make setup`, or `pip install --no-deps aisfx==0.1.2`"


class ConvBlock(nn.Module):
    """Two 3×3 conv + BatchNorm + ReLU layers; attribute names match the aiSFX checkpoint."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU in place on the batch norm's output, which no backward needs.
        x = torch.relu_(self.bn1(self.conv1(x)))
        # The network's one-channel input has no channels-last form of its own; from here on
        # it does.
        x = in_cpu_layout(self, x)
        return torch.relu_(self.bn2(self.conv2(x)))


class SfxNet(nn.Module):
    """Blocks of normalised log-mel (`N×100×96`) → `N×8·width` embeddings (≥ 0, after ReLU)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv_block1 = ConvBlock(1, width)
        self.conv_block2 = ConvBlock(width, 2 * width)
        self.conv_block3 = ConvBlock(2 * width, 4 * width)
        self.conv_block4 = ConvBlock(4 * width, 8 * width)
        self.output_dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)  # N×1×frames×mels
        x = nn.functional.max_pool2d(self.conv_block1(x), 2)
        x = nn.functional.max_pool2d(self.conv_block2(x), 2)
        x = nn.functional.max_pool2d(self.conv_block3(x), 2)
        x = self.conv_block4(x)  # N×C×frames/8×mels/8
        return x.mean(dim=3).amax(dim=2)  # N×C


class SoundCNN(Encoder):
    """`B×N` waveform at 44.1 kHz → `B×D` clip embedding, or `B×blocks×D` block tokens."""

    modality = "audio"

    def __init__(self, width: int = 64, duration: float = 5.0, stats: bool = False):
        super().__init__()
        # The transform hands over the waveform; the other fields describe the front end that
        # runs in forward, for whoever reads a saved config.
        self.input_spec = AudioSpec(
            sample_rate=SAMPLE_RATE,
            duration=duration,
            feature="waveform",
            n_fft=FRAME,
            hop_length=HOP,
            n_mels=N_MELS,
            fmax=SAMPLE_RATE / 2,
            top_db=None,
        )
        self.net = SfxNet(width)
        # `stats`: beside the CNN's embedding, each mel band's mean and standard deviation over
        # the clip. A network trained on sound effects keeps what tells a door from a bell and
        # drops what tells one voice from another (its spectral envelope), which those
        # statistics keep: they are what MFCC-statistics baselines classify voices with.
        self.stats = stats
        self.output_dim = self.net.output_dim + (2 * N_MELS if stats else 0)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, ("B", "N"), WHAT)
        return self._tokens(x, content_frames(x))

    def _tokens(
        self, x: torch.Tensor, frames: torch.Tensor, used: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Block tokens of clips whose audio spans `frames`; with `used` (blocks per clip)
        the blocks past every clip's last are left out (zeros a loader padded with)."""
        spec = log_mel_frames(x) / SPEC_MAX  # B×T×96
        blocks = spectrogram_blocks(spec)  # B×K×100×96
        if used is not None and not torch.jit.is_tracing():
            # Short clips padded to `duration` would otherwise spend most of the network on
            # silence that the mean leaves out. (A traced graph keeps every block.)
            blocks = blocks[:, : int(used.max())]
        # -1 for B: a traced (ONNX) graph keeps the batch size free.
        k = blocks.shape[1]
        per_row = self.net.conv_block1.conv1.out_channels * BLOCK * N_MELS
        tokens = in_slices(self, self.net, blocks.flatten(0, 1), per_row)
        tokens = tokens.view(-1, k, self.net.output_dim)  # B×K×C
        if not self.stats:
            return tokens
        # Every block carries the clip's statistics, so tokens keep the vector's width and
        # their mean is the vector.
        summary = mel_statistics(spec, frames)  # B×192
        return torch.cat([tokens, summary[:, None].expand(-1, k, -1)], dim=-1)  # B×K×D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mean over blocks keeps a clip's scale independent of its length, and every part of
        # the clip counts alike (blocks overlap by half); the max over time inside each block
        # already keeps short events. Blocks made only of the zeros a loader padded with are
        # left out, so a clip embeds the same alone as padded to `duration`.
        check_shape(x, ("B", "N"), WHAT)
        frames = content_frames(x)
        used = block_count(frames)  # B
        tokens = self._tokens(x, frames, used)  # B×K×D
        keep = torch.arange(tokens.shape[1], device=x.device) < used[:, None]  # B×K
        keep = keep.unsqueeze(-1).to(tokens.dtype)
        return (tokens * keep).sum(dim=1) / keep.sum(dim=1)  # B×D


def mel_statistics(spec: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """`B×T×M` log-mel → `B×2M`: each band's mean, then its standard deviation, over the
    first `frames[b]` frames of clip b (the frames its audio spans, not the loader's padding)."""
    valid = torch.arange(spec.shape[1], device=spec.device) < frames[:, None]  # B×T
    weight = valid.to(spec.dtype).unsqueeze(-1)  # B×T×1
    count = weight.sum(dim=1).clamp_min(1.0)  # B×1
    mean = (spec * weight).sum(dim=1) / count  # B×M
    var = ((spec - mean[:, None]).square() * weight).sum(dim=1) / count
    # Clamped: a silent clip's bands have variance 0, where sqrt's gradient is infinite.
    return torch.cat([mean, var.clamp_min(1e-12).sqrt()], dim=-1)


def spectrogram_blocks(spec: torch.Tensor) -> torch.Tensor:
    """`B×T×M` → `B×K×100×M`: aiSFX's blocks, K = `block_count(T)`.

    A partial block at the end is dropped, as aiSFX does by default; a clip shorter than one
    block is zero-padded to one (zero is the log-mel of silence).
    """
    if spec.shape[1] < BLOCK:
        spec = nn.functional.pad(spec, (0, 0, 0, BLOCK - spec.shape[1]))
    return sliding(spec, BLOCK, BLOCK_HOP, dim=1).transpose(2, 3)  # B×K×100×M


def block_count(frames: torch.Tensor) -> torch.Tensor:
    """Blocks aiSFX embeds for clips of `frames` log-mel frames (at least one)."""
    return ((frames - BLOCK) // BLOCK_HOP + 1).clamp_min(1)


def content_frames(x: torch.Tensor) -> torch.Tensor:
    """Per clip of `B×N`, the frames its audio spans once trailing zeros (padding) are cut."""
    # An empty clip counts as one silent hop; a positive ceiling division (see frame_count).
    hops = max(1, (x.shape[-1] + HOP - 1) // HOP)
    chunks = nn.functional.pad(x, (0, hops * HOP - x.shape[-1])).view(-1, hops, HOP)
    sounding = (chunks != 0).any(dim=-1)  # B×hops
    # The last sounding hop, counted from 1 (0 for silence), is ceil(length / HOP).
    last = (sounding * torch.arange(1, hops + 1, device=x.device)).amax(dim=-1)
    return last + 1  # as frame_count(length)


def aisfx_checkpoint() -> Path:
    """Where the installed `aisfx` package keeps its weights; EncoderError if it is missing."""
    # find_spec locates the package without importing it (its __init__ pulls in tqdm).
    spec = find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError(
            "audio encoder 'sound-cnn' needs the aiSFX weights from the `aisfx` package, which "
            f"is not installed: {INSTALL_HINT}; or build it with pretrained=False"
        )
    path = Path(spec.submodule_search_locations[0]) / CHECKPOINT
    if not path.is_file():
        raise EncoderError(f"the aisfx package has no {CHECKPOINT} at {path}: {INSTALL_HINT}")
    return path


def load_aisfx_checkpoint(path: str | Path | None = None) -> tuple[dict, dict]:
    """The aiSFX checkpoint as saved, `(state_dict, dataset_table)`, without arbitrary unpickling.

    The dataset table holds numpy integers, so the loader allows exactly numpy's scalar
    constructor and the dtypes and nothing else.
    """
    path = aisfx_checkpoint() if path is None else Path(path)
    allowed = [
        (numpy_scalar(), "numpy.core.multiarray.scalar"),  # the name the pickle uses
        np.dtype,
        type(np.dtype("int64")),
    ]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def numpy_scalar():
    """numpy's scalar constructor, which numpy 2 moved from numpy.core to numpy._core."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:
        from numpy.core.multiarray import scalar
    return scalar


def load_aisfx_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """`SfxNet`'s state dict: the checkpoint's embedding network, without the nine per-dataset
    classifier heads (`fc.*`) it was trained with."""
    weights, _ = load_aisfx_checkpoint(path)
    prefix = "embedding_net."
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


@register("audio", "sound-cnn")
def sound_cnn(pretrained: bool = True, duration: float = 5.0, stats: bool = False) -> SoundCNN:
    """The aiSFX CNN, 512-d (704 with `stats`: the 96 mel bands' means and deviations);
    `pretrained=False` leaves it random (a saved model's weights replace them anyway, so
    loading one does not need the aisfx package)."""
    encoder = SoundCNN(width=64, duration=duration, stats=stats)
    if pretrained:
        encoder.net.load_state_dict(load_aisfx_weights(), strict=True)
    return encoder


@register("audio", "sound-cnn-tiny")
def sound_cnn_tiny(width: int = 4, duration: float = 5.0, stats: bool = False) -> SoundCNN:
    """The same network and front end with few channels and random weights, for tests."""
    return SoundCNN(width=width, duration=duration, stats=stats)
