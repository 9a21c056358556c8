"""Checks on audio that libsndfile and FFmpeg let through: poisoned samples and cut-off files.

libsndfile silently shortens a WAV or AIFF whose data stops before its header says (the frame
count it reports is what the file holds), so the promise is read from the chunk headers here and
compared with the file's size. A FLAC's STREAMINFO keeps the promised sample count, and seeking
to its last sample fails when the file was cut.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from mmfuse.errors import MediaError

# A float sample this far past full scale (1.0) is no recording: squared in a log-mel it
# overflows float32, and one such file turns a whole model's weights into NaN.
MAX_PEAK = 1e3
# Bytes per sample of the uncompressed codings, by soundfile subtype.
_SAMPLE_BYTES = {
    "PCM_S8": 1,
    "PCM_U8": 1,
    "ULAW": 1,
    "ALAW": 1,
    "PCM_16": 2,
    "PCM_24": 3,
    "PCM_32": 4,
    "FLOAT": 4,
    "DOUBLE": 8,
}
# A header-and-chunk walk stops after this many chunks: a forged file cannot make it loop long.
_MAX_CHUNKS = 64


def check_samples(path: str | Path, data: np.ndarray) -> None:
    """Raise `MediaError("non-finite")` for NaN/Inf samples or a peak over `MAX_PEAK`."""
    if data.size == 0:
        return
    peak = float(np.max(np.abs(data)))  # NaN anywhere makes the max NaN
    if not math.isfinite(peak):
        raise MediaError(
            path,
            "non-finite",
            "non-finite samples (NaN or infinity): re-export the audio from its source",
        )
    if peak > MAX_PEAK:
        raise MediaError(
            path,
            "non-finite",
            f"peak amplitude {peak:.3g} is over {MAX_PEAK:g} times full scale, which no "
            "recording reaches (its features would overflow): re-export or normalise it",
        )


def check_complete(path: Path, info) -> None:
    """Raise `MediaError("truncated")` when the file holds less audio than its header promises.

    `info` is `soundfile.info(path)`. Formats without a checkable promise pass.
    """
    if info.format in ("WAV", "WAVEX", "AIFF"):
        promised, held = _pcm_extent(path)
        width = _SAMPLE_BYTES.get(info.subtype)
        frame_bytes = max(1, info.channels) * (width or 1)
        if promised is not None and held + frame_bytes <= promised:
            if width:
                seconds = promised / frame_bytes / info.samplerate
            else:  # a compressed coding: libsndfile counted its frames from the bytes held
                seconds = info.duration * promised / max(held, 1)
            _truncated(path, seconds, held / promised)
    elif info.format == "FLAC" and info.frames > 0:
        try:
            with sf.SoundFile(str(path)) as f:
                f.seek(info.frames - 1)
                last = f.read(1, dtype="float32")
        except (sf.LibsndfileError, RuntimeError):
            last = ()
        if len(last) == 0:
            _truncated(path, info.frames / info.samplerate, None)


def _truncated(path: Path, promised_s: float, share: float | None) -> None:
    held = "" if share is None else f" and holds {share:.0%} of it"
    raise MediaError(
        path,
        "truncated",
        f"its header promises {promised_s:.3f} s of audio but the file ends early{held}: "
        "it was cut short, copy or export it again",
    )


def _pcm_extent(path: Path) -> tuple[int | None, int]:
    """(data bytes the header promises, data bytes the file holds) of a RIFF/RIFX or AIFF file.

    (None, 0) when the header gives no usable size: a stream writer's placeholder (0 or
    0xFFFFFFFF) means "read to the end", which libsndfile does.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
            order, data_id, skip = ("<" if head[:4] == b"RIFF" else ">"), b"data", 0
        elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            order, data_id, skip = ">", b"SSND", 8  # SSND starts with offset and block size
        else:
            return None, 0
        pos = 12
        for _ in range(_MAX_CHUNKS):
            f.seek(pos)
            header = f.read(8)
            if len(header) < 8:
                return None, 0
            length = struct.unpack(order + "I", header[4:])[0]
            if header[:4] == data_id:
                if length in (0, 0xFFFFFFFF) or length <= skip:
                    return None, 0
                start = pos + 8 + skip
                return length - skip, max(0, min(size, start + length - skip) - start)
            pos += 8 + length + (length & 1)  # chunks are padded to an even length
    return None, 0
