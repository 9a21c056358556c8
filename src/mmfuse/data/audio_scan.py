"""Measure an audio file without holding it: length and level, a block at a time, for `validate`.

Every check a read makes applies (truncation, non-finite samples, the audio budget), so a file
that passes here also reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mmfuse.data._audio_checks import check_samples
from mmfuse.data.audio import (
    _TRUNCATION_SLACK_S,
    SOUNDFILE_EXTENSIONS,
    _decoded_chunks,
    _header_duration,
    _open_audio,
    _soundfile_info,
    _SoundfileCannot,
)
from mmfuse.data.budgets import Budgets, resolve
from mmfuse.data.modalities import DEFAULT_MAX_BYTES, check_file, media_errors_only
from mmfuse.errors import MediaError


@dataclass(frozen=True)
class AudioStats:
    """What `validate` needs of an audio file, measured without holding it in memory."""

    seconds: float  # the file's length: decoded to its end, or the header's past the budget
    rms: float  # root mean square of the mono mix over the decoded part
    rate: int


@media_errors_only("audio")
def audio_stats(
    path: str | Path, *, budgets: Budgets | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> AudioStats:
    """Length and level of an audio file, decoded a block at a time with every check of a read.

    At most `budgets.audio_seconds` are decoded (a longer file is measured on that much) and a
    single block is held at once, so memory does not depend on the file's length.
    """
    path = check_file(path, max_bytes)
    limit = resolve(budgets).audio_seconds
    source = _pyav_blocks
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            _soundfile_info(path)
            source = _soundfile_blocks
        except _SoundfileCannot:
            pass
    square, count, rate, header = 0.0, 0, 1, None
    for block, block_rate, block_header in source(path, limit):  # block: C×n
        rate, header = block_rate, block_header
        mono = block.mean(axis=0) if block.shape[0] > 1 else block[0]
        square += float(np.square(mono, dtype=np.float64).sum())
        count += len(mono)
    if count == 0:
        raise MediaError(path, "zero-length", "the file holds no audio samples")
    decoded = count / rate
    return AudioStats(max(decoded, header or 0.0), math.sqrt(square / count), rate)


def _soundfile_blocks(path: Path, limit: float):
    """Yield `(C×n block, rate, header seconds)` up to `limit` seconds."""
    info = sf.info(str(path))
    frames = min(info.frames, math.ceil(limit * info.samplerate))
    try:
        blocks = sf.blocks(
            str(path), blocksize=1 << 16, frames=frames, dtype="float32", always_2d=True
        )
        for block in blocks:  # N×C
            check_samples(path, block)
            yield block.T, info.samplerate, info.duration
    except (sf.LibsndfileError, RuntimeError) as e:
        raise MediaError(path, "truncated", f"decoding stopped early: {e}") from None


def _pyav_blocks(path: Path, limit: float):
    """Yield `(C×n chunk, rate, header seconds)` up to `limit` seconds; a track that decodes to
    well before its header's end is truncated, as in a read."""
    container, stream = _open_audio(path)
    with container:
        header = _header_duration(container, stream)
        rate = stream.codec_context.sample_rate or stream.rate
        total = 0
        for chunk, _ in _decoded_chunks(container, stream, 0.0, path):
            yield chunk, rate, header
            total += chunk.shape[1]
            if total >= limit * rate:
                return
        got = total / rate
        if header is not None and total and got < header - max(_TRUNCATION_SLACK_S, 0.05 * header):
            raise MediaError(
                path,
                "truncated",
                f"audio decodes to {got:.3f} s but the header promises {header:.3f} s",
            )
