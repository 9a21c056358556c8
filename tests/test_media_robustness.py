"""Whatever the bytes, a reader returns or raises MediaError: nothing else escapes."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfuse import MediaError, read_audio, read_image, read_video
from mmfuse.data import modality_of_path, probe_video, validate

READERS = {
    "image": read_image,
    "audio": read_audio,
    "video": lambda p: read_video(p, 4, with_audio=True),
}


def _read(path):
    modality = modality_of_path(str(path))
    with contextlib.suppress(MediaError):
        READERS[modality](path)


@pytest.mark.parametrize("cut", [0.05, 0.5, 0.95])
def test_every_corpus_file_cut_short(media, tmp_path, cut):
    for key, path in media.items():
        if modality_of_path(path.name) not in READERS:
            continue
        data = path.read_bytes()
        damaged = tmp_path / f"{key}{path.suffix}"
        damaged.write_bytes(data[: max(1, int(len(data) * cut))])
        _read(damaged)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(min_size=1, max_size=600),
    suffix=st.sampled_from([".jpg", ".png", ".wav", ".mp3", ".m4a", ".mp4", ".webm", ".avi"]),
)
def test_random_bytes_with_any_extension(tmp_path, data, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    _read(path)


def test_bytes_flipped_inside_a_video(media, tmp_path):
    data = bytearray(media["h264_audio_mp4"].read_bytes())
    rng = np.random.default_rng(0)
    for i in range(20):
        damaged = bytearray(data)
        for pos in rng.integers(len(data) // 4, len(data), 30):
            damaged[pos] ^= 0xFF
        path = tmp_path / f"flip{i}.mp4"
        path.write_bytes(bytes(damaged))
        with contextlib.suppress(MediaError):
            probe_video(path)
        _read(path)


def test_validate_survives_the_damaged_corpus(media, tmp_path):
    import pandas as pd

    rows = []
    for key, path in media.items():
        modality = modality_of_path(path.name)
        if modality in READERS:
            damaged = tmp_path / f"half_{key}{path.suffix}"
            damaged.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            rows.append({modality: str(damaged), "label": "x"})
    problems = validate(pd.DataFrame(rows))
    assert problems and all(p.severity in ("error", "warning") for p in problems)
