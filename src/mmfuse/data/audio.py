"""Audio reading: soundfile for wav/flac/ogg/aiff, PyAV for compressed formats and video tracks.

Everything comes back as float32 in [-1, 1], `C×N` (or `N` when mono), resampled with soxr: the
resampler librosa itself uses by default, so our waveforms match `librosa.load`, and it comes
with librosa at no extra cost.

A read decodes only the window it is asked for (seek, then stop), checks the header's promise
against the file (a cut-off WAV/FLAC/AIFF is "truncated", not short), refuses NaN/Inf or
absurd samples ("non-finite") and never decodes more than `Budgets.audio_seconds`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr
import torch

from mmfuse.data._audio_checks import check_complete, check_samples
from mmfuse.data.budgets import Budgets, resolve
from mmfuse.data.modalities import (
    DEFAULT_MAX_BYTES,
    check_file,
    media_errors_only,
    refuse_other_modality,
    unreadable,
)
from mmfuse.errors import MediaError

SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".aif", ".aiff"})

# A file that ends this much (or more) before its header says counts as truncated; container
# durations are approximate (priming samples, last-packet padding), hence the slack.
_TRUNCATION_SLACK_S = 0.1
# How far before a window's start a compressed stream is entered (see _decoded_chunks).
_SEEK_PREROLL_S = 0.2
# Samples decoded on each side of a window, so that resampling it gives the samples a resampled
# whole file would have there (a filter needs context; at a cut edge it rings).
_RESAMPLE_EDGE_S = 0.02


@dataclass(frozen=True)
class _Window:
    """What to decode: from `offset` (or at `crop` of the slack) for `duration` seconds."""

    offset: float
    duration: float | None
    crop: float | None
    max_seconds: float

    def start(self, header_seconds: float | None) -> float:
        if self.crop is None or self.duration is None or not header_seconds:
            return self.offset
        return self.crop * max(0.0, header_seconds - self.duration)

    def check_length(self, path: Path, header_seconds: float | None, start: float) -> None:
        """A whole-file read of a file longer than the budget is refused before decoding."""
        if self.duration is None and header_seconds and header_seconds - start > self.max_seconds:
            raise too_long(path, header_seconds - start, self.max_seconds)


def too_long(path: str | Path, seconds: float, limit: float) -> MediaError:
    """The error for a read that would decode more than the audio budget."""
    return MediaError(
        path,
        "too-large",
        f"{seconds:.1f} s of audio is over the {limit:g} s decode budget; read a part of it "
        f"(duration=), or {Budgets().how_to_raise('audio_seconds')}",
    )


def read_audio(
    path: str | Path,
    *,
    sample_rate: int | None = None,
    mono: bool = True,
    offset: float = 0.0,
    duration: float | None = None,
    crop: float | None = None,
    pad: bool = True,
    budgets: Budgets | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> tuple[torch.Tensor, int]:
    """Decode `[offset, offset + duration)` seconds of an audio file (or a video's audio track).

    Returns `(samples, rate)`: samples is float32 `N` when `mono`, else `C×N`. With `duration`
    and `pad`, a clip shorter than asked is zero-padded at the end to exactly
    `round(duration * rate)` samples. `sample_rate=None` keeps the file's rate. `crop` places
    the window in a longer file instead of `offset`: 0 at the start, 0.5 centred, 1 at the end
    (of the length the header gives). Only the window is decoded; a read of more than
    `budgets.audio_seconds` (default: `Budgets.from_env()`) raises `MediaError("too-large")`.
    """
    # Argument mistakes are the caller's, not the file's: checked before the reader's
    # promise that every failure is a MediaError.
    if offset < 0:
        raise ValueError(f"offset must be >= 0 seconds, got {offset}")
    if crop is not None and (offset or not 0 <= crop <= 1 or duration is None):
        raise ValueError(f"crop={crop} needs a duration, offset=0 and 0 <= crop <= 1")
    window = _Window(offset, duration, crop, resolve(budgets).audio_seconds)
    data, rate, lead = _decode_file(path, window, max_bytes)
    return finish_audio(data, rate, sample_rate, mono, duration, pad, lead)


@media_errors_only("audio")
def _decode_file(path: str | Path, window: _Window, max_bytes: int | None):
    path = check_file(path, max_bytes)
    if window.duration is not None and window.duration > window.max_seconds:
        raise too_long(path, window.duration, window.max_seconds)
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            return _read_soundfile(path, window)
        except _SoundfileCannot:
            pass
    return _read_pyav(path, window)


def finish_audio(
    data: np.ndarray,
    rate: int,
    sample_rate: int | None,
    mono: bool,
    duration: float | None,
    pad: bool = True,
    lead: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Decoded `C×N` audio → mono or kept channels, resampled, cut/padded to `duration`.

    Audio files and video tracks both end here, so both come out shaped the same way. The
    first `lead` seconds are context for the resampler, cut after it.
    """
    if mono and data.shape[0] > 1:
        data = data.mean(axis=0, keepdims=True)
    if sample_rate is not None and sample_rate != rate:
        data = resample(data, rate, sample_rate)
        rate = sample_rate
    data = data[:, round(lead * rate) :]
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


def _soundfile_info(path: Path):
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as e:
        raise _SoundfileCannot(str(e)) from None
    check_complete(path, info)
    return info


def _read_soundfile(path: Path, window: _Window) -> tuple[np.ndarray, int, float]:
    """(C×N samples, rate, seconds of them before the window: resampler context)."""
    info = _soundfile_info(path)
    rate = info.samplerate
    offset = window.start(info.duration)
    start = round(offset * rate)
    if info.frames and start >= info.frames:
        raise MediaError(
            path, "too-short", f"offset {offset:.3f} s is past the end ({info.duration:.3f} s)"
        )
    window.check_length(path, info.duration, offset)
    stop = info.frames if window.duration is None else start + round(window.duration * rate)
    edge = 0 if window.duration is None else round(_RESAMPLE_EDGE_S * rate)
    first, stop = start - min(start, edge), min(info.frames, stop + edge)
    try:
        data = sf.read(str(path), start=first, stop=stop, dtype="float32", always_2d=True)[0]
    except (sf.LibsndfileError, RuntimeError) as e:
        raise MediaError(path, "truncated", f"decoding stopped early: {e}") from None
    if data.shape[0] <= start - first:
        raise MediaError(path, "zero-length", "the file holds no audio samples")
    if data.shape[0] < stop - first - round(_TRUNCATION_SLACK_S * rate):
        raise MediaError(
            path,
            "truncated",
            f"decoded {data.shape[0] / rate:.3f} s of the {(stop - first) / rate:.3f} s "
            "its header promises",
        )
    check_samples(path, data)
    return data.T, rate, (start - first) / rate  # C×N


def _open_audio(path: Path) -> tuple[av.container.InputContainer, object]:
    refuse_other_modality(path, "audio")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise unreadable(path, "audio", e) from None
    if not container.streams.audio:
        kind = "video without an audio track" if container.streams.video else "no audio"
        container.close()
        raise MediaError(path, "wrong-modality", f"expected audio, found {kind}")
    return container, container.streams.audio[0]


def _read_pyav(path: Path, window: _Window) -> tuple[np.ndarray, int, float]:
    container, stream = _open_audio(path)
    with container:
        header_end = _header_duration(container, stream)
        offset = window.start(header_end)
        window.check_length(path, header_end, offset)
        end = None if window.duration is None else offset + window.duration
        lead = 0.0 if end is None else min(offset, _RESAMPLE_EDGE_S)
        tail = None if end is None else end + _RESAMPLE_EDGE_S
        data, rate = decode_audio_stream(
            container, stream, offset - lead, tail, path, window.max_seconds
        )
        if data.shape[1] <= round(lead * rate):
            if header_end is not None and offset >= header_end:
                raise MediaError(
                    path, "too-short", f"offset {offset:.3f} s is past the end ({header_end:.3f} s)"
                )
            raise MediaError(path, "zero-length", "the audio track holds no samples")
        want_end = header_end if end is None else min(end, header_end or end)
        got_end = offset - lead + data.shape[1] / rate
        if want_end is not None and got_end < want_end - max(_TRUNCATION_SLACK_S, 0.05 * want_end):
            raise MediaError(
                path,
                "truncated",
                f"audio decodes to {got_end:.3f} s but the header promises {want_end:.3f} s",
            )
        return data, rate, lead


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
    max_seconds: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode `[start, end)` seconds of one audio stream to float32 `C×N` at its own rate.

    Shared by audio files and video audio tracks, so both cut windows the same way. With no
    `end`, decoding past `max_seconds` raises `MediaError("too-large")`; NaN/Inf or absurd
    samples raise `MediaError("non-finite")`.
    """
    rate = stream.codec_context.sample_rate or stream.rate
    want = None if end is None else math.ceil((end - start) * rate)
    limit = math.ceil(max_seconds * rate) if want is None and max_seconds else None
    chunks: list[np.ndarray] = []
    skip = None  # samples before `start` (the seek lands on an earlier packet), cut below
    total = 0
    for chunk, first_time in _decoded_chunks(container, stream, start, path):
        chunks.append(chunk)
        total += chunk.shape[1]
        if skip is None:
            skip = max(0, round((start - first_time) * rate))
        if want is not None and total - skip >= want:
            break
        if limit is not None and total - skip > limit:
            raise too_long(path, (total - skip) / rate, max_seconds)
    channels = stream.codec_context.channels or 1
    if not chunks:
        return np.zeros((channels, 0), np.float32), rate
    data = np.concatenate(chunks, axis=1)[:, skip:]
    return (data if want is None else data[:, :want]), rate


def _decoded_chunks(container, stream, start: float, path: str | Path):
    """Yield `(C×n float32 at the stream's rate, time of the first decoded frame)` from `start`."""
    rate = stream.codec_context.sample_rate or stream.rate
    channels = stream.codec_context.channels or 1
    # Convert whatever sample format the codec gives to planar float, keeping rate and layout.
    converter = av.AudioResampler(format="fltp", layout=stream.codec_context.layout.name, rate=rate)
    if start > 0:
        # Land a little early: codecs with overlapping frames (AAC, MP3, Opus) decode the first
        # frame after a seek wrong; those samples fall before `start` and are cut.
        at = max(0.0, start - _SEEK_PREROLL_S)
        container.seek(int(at / stream.time_base), stream=stream, backward=True)
    first_time = None
    try:
        for frame in container.decode(stream):
            if first_time is None:
                first_time = float(frame.time) if frame.time is not None else 0.0
            for out in converter.resample(frame):
                chunk = out.to_ndarray().reshape(channels, -1)
                check_samples(path, chunk)
                yield chunk, first_time
    except av.FFmpegError as e:
        if first_time is None:
            raise unreadable(path, "audio", e) from None
        raise MediaError(path, "truncated", f"audio decoding failed part-way: {e}") from None
    for out in converter.resample(None):  # flush what the converter still holds
        chunk = out.to_ndarray().reshape(channels, -1)
        check_samples(path, chunk)
        yield chunk, first_time or 0.0
