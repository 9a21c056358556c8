"""Audio reading: soundfile for wav/flac/ogg, PyAV for compressed formats and video tracks.

Everything comes back as float32 in [-1, 1], `C×N` (or `N` when mono), resampled with soxr: the
resampler librosa itself uses by default, so our waveforms match `librosa.load`, and it comes
with librosa at no extra cost.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr
import torch

from mmfuse.data.modalities import (
    DEFAULT_MAX_BYTES,
    check_file,
    media_errors_only,
    refuse_other_modality,
    unreadable,
)
from mmfuse.errors import MediaError

SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})

# A file that ends this much (or more) before its header says counts as truncated; container
# durations are approximate (priming samples, last-packet padding), hence the slack.
_TRUNCATION_SLACK_S = 0.1


@media_errors_only("audio")
def read_audio(
    path: str | Path,
    *,
    sample_rate: int | None = None,
    mono: bool = True,
    offset: float = 0.0,
    duration: float | None = None,
    pad: bool = True,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> tuple[torch.Tensor, int]:
    """Decode `[offset, offset + duration)` seconds of an audio file (or a video's audio track).

    Returns `(samples, rate)`: samples is float32 `N` when `mono`, else `C×N`. With `duration`
    and `pad`, a clip shorter than asked is zero-padded at the end to exactly
    `round(duration * rate)` samples. `sample_rate=None` keeps the file's rate.
    """
    path = check_file(path, max_bytes)
    if offset < 0:
        raise ValueError(f"offset must be >= 0 seconds, got {offset}")
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            data, rate = _read_soundfile(path, offset, duration)
        except _SoundfileCannot:
            data, rate = _read_pyav(path, offset, duration)
    else:
        data, rate = _read_pyav(path, offset, duration)

    return finish_audio(data, rate, sample_rate, mono, duration, pad)


def finish_audio(
    data: np.ndarray,
    rate: int,
    sample_rate: int | None,
    mono: bool,
    duration: float | None,
    pad: bool = True,
) -> tuple[torch.Tensor, int]:
    """Decoded `C×N` audio → mono or kept channels, resampled, cut/padded to `duration`.

    Audio files and video tracks both end here, so both come out shaped the same way.
    """
    if mono and data.shape[0] > 1:
        data = data.mean(axis=0, keepdims=True)
    if sample_rate is not None and sample_rate != rate:
        data = resample(data, rate, sample_rate)
        rate = sample_rate
    if duration is not None:
        want = round(duration * rate)
        data = data[:, :want]
        if pad and data.shape[1] < want:
            data = np.pad(data, ((0, 0), (0, want - data.shape[1])))
    out = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return (out[0] if mono else out), rate


def resample(data: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample `C×N` float audio with soxr (high quality), channel by channel."""
    if orig_rate == target_rate:
        return data
    # soxr wants N×C; it returns a 1-D array for a single channel.
    out = soxr.resample(np.ascontiguousarray(data.T), orig_rate, target_rate, quality="HQ")
    return np.ascontiguousarray(out.reshape(out.shape[0], -1).T, dtype=np.float32)


class _SoundfileCannot(Exception):
    """libsndfile does not know this file: let PyAV try (e.g. Opus in Ogg on old libsndfile)."""


def _read_soundfile(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as e:
        raise _SoundfileCannot(str(e)) from None
    rate = info.samplerate
    start = round(offset * rate)
    if info.frames and start >= info.frames:
        raise MediaError(
            path, "too-short", f"offset {offset:.3f} s is past the end ({info.duration:.3f} s)"
        )
    stop = info.frames if duration is None else min(info.frames, start + round(duration * rate))
    try:
        data = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)[0]
    except (sf.LibsndfileError, RuntimeError) as e:
        raise MediaError(path, "truncated", f"decoding stopped early: {e}") from None
    if data.shape[0] == 0:
        raise MediaError(path, "zero-length", "the file holds no audio samples")
    if data.shape[0] < stop - start - round(_TRUNCATION_SLACK_S * rate):
        raise MediaError(
            path,
            "truncated",
            f"decoded {data.shape[0] / rate:.3f} s of the {(stop - start) / rate:.3f} s "
            "its header promises",
        )
    return data.T, rate  # C×N


def _read_pyav(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    refuse_other_modality(path, "audio")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise unreadable(path, "audio", e) from None
    with container:
        if not container.streams.audio:
            kind = "video without an audio track" if container.streams.video else "no audio"
            raise MediaError(path, "wrong-modality", f"expected audio, found {kind}")
        stream = container.streams.audio[0]
        end = None if duration is None else offset + duration
        data, rate = decode_audio_stream(container, stream, offset, end, path)
        header_end = _header_duration(container, stream)
        if data.shape[1] == 0:
            if header_end is not None and offset >= header_end:
                raise MediaError(
                    path, "too-short", f"offset {offset:.3f} s is past the end ({header_end:.3f} s)"
                )
            raise MediaError(path, "zero-length", "the audio track holds no samples")
        want_end = header_end if end is None else min(end, header_end or end)
        got_end = offset + data.shape[1] / rate
        if want_end is not None and got_end < want_end - max(_TRUNCATION_SLACK_S, 0.05 * want_end):
            raise MediaError(
                path,
                "truncated",
                f"audio decodes to {got_end:.3f} s but the header promises {want_end:.3f} s",
            )
        return data, rate


def _header_duration(container: av.container.InputContainer, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def decode_audio_stream(
    container: av.container.InputContainer,
    stream,
    start: float,
    end: float | None,
    path: str | Path,
) -> tuple[np.ndarray, int]:
    """Decode `[start, end)` seconds of one audio stream to float32 `C×N` at its own rate.

    Shared by audio files and video audio tracks, so both cut windows the same way.
    """
    rate = stream.codec_context.sample_rate or stream.rate
    channels = stream.codec_context.channels or 1
    # Convert whatever sample format the codec gives to planar float, keeping rate and layout.
    converter = av.AudioResampler(format="fltp", layout=stream.codec_context.layout.name, rate=rate)
    if start > 0:
        container.seek(int(start / stream.time_base), stream=stream, backward=True)
    chunks: list[np.ndarray] = []
    first_time: float | None = None
    total = 0
    want = None if end is None else math.ceil((end - start) * rate)
    try:
        for frame in container.decode(stream):
            if first_time is None:
                first_time = float(frame.time) if frame.time is not None else 0.0
            for out in converter.resample(frame):
                arr = out.to_ndarray().reshape(channels, -1)
                chunks.append(arr)
                total += arr.shape[1]
            if want is not None and first_time is not None:
                # Samples before `start` (the seek lands on an earlier packet) are cut below.
                skip = max(0, round((start - first_time) * rate))
                if total - skip >= want:
                    break
    except av.FFmpegError as e:
        if not chunks:
            raise unreadable(path, "audio", e) from None
        raise MediaError(path, "truncated", f"audio decoding failed part-way: {e}") from None
    for out in converter.resample(None):  # flush what the converter still holds
        chunks.append(out.to_ndarray().reshape(channels, -1))
    if not chunks:
        return np.zeros((channels, 0), np.float32), rate
    data = np.concatenate(chunks, axis=1)
    skip = max(0, round((start - (first_time or 0.0)) * rate))
    data = data[:, skip:]
    if want is not None:
        data = data[:, :want]
    return data, rate
