"""The aiSFX front end in torch: a 44.1 kHz waveform → the log-mel frames the aiSFX CNN learnt on.

Ma and Lerch (ISMIR 2022) made their spectrograms with Essentia. This is the same chain written
from its settings (no Essentia code): 2048-sample frames every 1024 samples, cut as Essentia's
FrameCutter cuts them (frame `i` centred on sample `i·1024`, zeros outside the clip, one frame
past the last hop); a symmetric Hann window; the power spectrum; 96 HTK mel bands from 0 Hz to
Nyquist whose triangles are drawn on the mel axis and each sum to 1; then `log10(1e4·x + 1)`.

It differs from `mmfuse.features.audio.log_mel` (librosa's conventions) in every one of those
steps, which is why it is a function of its own rather than options of that one.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 44100
FRAME = 2048
HOP = 1024
N_MELS = 96
# log10(1e4·x + 1): the compression Essentia's tutorial chain applies, kept as aiSFX trained on it.
LOG_GAIN = 1e4


def frame_count(n_samples: int) -> int:
    """Frames FrameCutter cuts from `n_samples`: one per hop started, plus one past the end."""
    # Ceiling division written with positive operands: traced into ONNX, `//` of a negative
    # number truncates instead of flooring, which made the exported graph one frame short.
    return (n_samples + HOP - 1) // HOP + 1


def log_mel_frames(wave: torch.Tensor) -> torch.Tensor:
    """`B×N` float waveform at 44.1 kHz → `B×T×96` log-mel, T = `frame_count(N)`."""
    n = wave.shape[-1]
    frames = frame_count(n)
    # Frame i spans samples [(i-1)·HOP, (i+1)·HOP): HOP zeros before the clip, and after it
    # enough zeros for the last frame.
    padded = nn.functional.pad(wave, (HOP, frames * HOP - n))
    windows = sliding(padded, FRAME, HOP) * hann(wave.dtype, wave.device)  # B×T×FRAME
    power = power_spectrum(windows)  # B×T×(FRAME/2+1)
    mel = torch.matmul(power, mel_filterbank(wave.dtype, wave.device).T)  # B×T×96
    return torch.log10(mel * LOG_GAIN + 1.0)


def power_spectrum(windows: torch.Tensor) -> torch.Tensor:
    """|rfft|² of each window; under ONNX export (the exporter has no FFT) as two matmuls with
    the real DFT's cosine and sine bases, equal up to float rounding."""
    if not torch.onnx.is_in_onnx_export():
        spectrum = torch.fft.rfft(windows)
        return spectrum.real.square() + spectrum.imag.square()
    # In float64 (the bases' angles and the 2,048-term sums); float32 measured the same gap to
    # eager (tests/test_encoders_sound.py), which is the eager float32 FFT's own rounding.
    cos, sin = dft_bases(windows.shape[-1], torch.float64, windows.device)
    wide = windows.double()
    power = torch.matmul(wide, cos).square() + torch.matmul(wide, sin).square()
    return power.to(windows.dtype)


@functools.lru_cache(maxsize=4)
def dft_bases(n: int, dtype: torch.dtype, device: torch.device):
    """`n×(n/2+1)` cosine and sine bases of the real DFT."""
    k = torch.arange(n // 2 + 1, dtype=torch.float64)
    angle = 2 * torch.pi * torch.arange(n, dtype=torch.float64)[:, None] * k / n
    return angle.cos().to(dtype=dtype, device=device), angle.sin().to(dtype=dtype, device=device)


def sliding(x: torch.Tensor, size: int, hop: int, dim: int = -1) -> torch.Tensor:
    """`x.unfold(dim, size, hop)` (windows along `dim`, each window's values last); under ONNX
    export a gather, as the exporter's Unfold needs a static length and a clip's is not."""
    if not torch.onnx.is_in_onnx_export():
        return x.unfold(dim, size, hop)
    dim = dim % x.dim()
    count = (x.shape[dim] - size) // hop + 1
    starts = torch.arange(count, device=x.device) * hop
    index = starts[:, None] + torch.arange(size, device=x.device)  # count×size
    picked = x.index_select(dim, index.flatten())
    picked = picked.unflatten(dim, (count, size))  # ..., count, size, ...
    return picked.movedim(dim + 1, -1)


@functools.lru_cache(maxsize=8)
def hann(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Symmetric Hann (zero at both ends), as Essentia's Windowing; librosa's is periodic."""
    n = np.arange(FRAME)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / (FRAME - 1))
    return torch.from_numpy(window).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=8)
def mel_filterbank(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`96×1025` weights on the power spectrum: HTK mel bands, triangles on the mel axis, rows
    summing to 1 (Essentia's `weighting='warping'`, `normalize='unit_sum'`)."""
    edges = np.linspace(0.0, _hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2)  # band edges, in mel
    bins = _hz_to_mel(np.arange(FRAME // 2 + 1) * SAMPLE_RATE / FRAME)  # each FFT bin, in mel
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - low) / (centre - low)
    falling = (high - bins) / (high - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)  # 96×1025
    weights /= weights.sum(axis=1, keepdims=True)
    return torch.from_numpy(weights).to(dtype=dtype, device=device)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)
