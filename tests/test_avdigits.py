"""avdigits: the generated audio-visual-text digits dataset, at a small size."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import mmfuse
from mmfuse.data.avdigits import (
    COLUMNS,
    MARKER,
    SAMPLE_RATE,
    SPLITS,
    VOICES,
    WORDS,
    avdigits_path,
    ensure_avdigits,
    make_avdigits,
    speak,
)

SAMPLES = 60


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Two generations with seed 0 (in-process, and with 2 workers) and one with seed 1."""
    root = tmp_path_factory.mktemp("avdigits")
    return {
        "a": make_avdigits(root / "a", samples=SAMPLES, seed=0, workers=1, progress=False),
        "b": make_avdigits(root / "b", samples=SAMPLES, seed=0, workers=2, progress=False),
        "other": make_avdigits(root / "c", samples=SAMPLES, seed=1, workers=1, progress=False),
    }


def _rows(paths: dict[str, Path]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(paths[s]) for s in SPLITS], ignore_index=True)


def _media(paths: dict[str, Path], column: str) -> list[Path]:
    root = paths["train"].parent
    return [root / p for p in _rows(paths)[column]]


def _video_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_manifests_infer_roles_and_point_at_files(generated):
    paths = generated["a"]
    assert set(paths) == set(SPLITS)
    assert (paths["train"].parent / MARKER).is_file()
    sizes = {}
    for split, path in paths.items():
        assert list(pd.read_csv(path).columns) == list(COLUMNS)
        manifest = mmfuse.read_manifest(path)
        assert manifest.roles == {c: c for c in COLUMNS}
        assert manifest.labels == ["label"]
        for column in ("image", "audio", "video"):
            assert all(Path(p).is_file() for p in manifest.frame[column])
        sizes[split] = len(manifest)
        if split == "train":
            assert manifest.classes["label"] == [str(k) for k in range(10)]
    assert sizes == {"train": 42, "val": 9, "test": 9}  # 70/15/15 of 60


def test_same_seed_gives_identical_files(generated):
    a, b = generated["a"], generated["b"]
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
    for x, y in zip(_media(a, "image"), _media(b, "image")):
        assert x.read_bytes() == y.read_bytes()
    for x, y in zip(_media(a, "audio"), _media(b, "audio")):
        assert np.array_equal(sf.read(x)[0], sf.read(y)[0])
    for x, y in zip(_media(a, "video"), _media(b, "video")):
        assert np.array_equal(_video_frames(x), _video_frames(y))


def test_other_seed_differs(generated):
    a, other = generated["a"], generated["other"]
    assert a["train"].read_bytes() != other["train"].read_bytes()
    first, second = _media(a, "image")[0], _media(other, "image")[0]
    assert first.name == second.name and first.read_bytes() != second.read_bytes()


def test_audio_is_one_second_of_16k_mono(generated):
    for path in _media(generated["a"], "audio")[:10]:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 1, SAMPLE_RATE)
        assert np.abs(sf.read(path)[0]).max() > 0.1


def test_video_lasts_one_second_with_an_audio_track(generated):
    for path in _media(generated["a"], "video")[:5]:
        info = mmfuse.probe_video(path)
        assert info.has_audio
        assert info.duration == pytest.approx(1.0, abs=0.05)
        assert (info.codec, info.width, info.height) == ("h264", 48, 48)


def test_captions_name_the_digit_only_sometimes(generated):
    rows = _rows(generated["a"])

    def names(text: str, label: int) -> bool:
        return re.search(rf"\b({label}|{WORDS[label]})\b", text) is not None

    named = np.mean([names(t, k) for t, k in zip(rows.text, rows.label)])
    assert 0.2 < named < 0.8


def test_voices_are_many_and_all_speak():
    assert len(set(VOICES)) == len(VOICES) >= 8
    for voice in VOICES:
        speech = speak("seven", voice)
        assert speech.dtype == np.float32
        assert 0.2 * SAMPLE_RATE < len(speech) <= SAMPLE_RATE  # fits the 1 s clip
        assert np.sqrt(np.mean(speech**2)) > 0.05


def test_ensure_reuses_a_complete_folder_and_redoes_an_incomplete_one(tmp_path):
    first = ensure_avdigits(samples=20, seed=3, root=tmp_path, progress=False)
    image = tmp_path / pd.read_csv(first["train"]).image[0]
    stamp = image.stat().st_mtime_ns, first["train"].stat().st_mtime_ns
    again = ensure_avdigits(samples=20, seed=3, root=tmp_path, progress=False)
    assert again == first
    assert (image.stat().st_mtime_ns, first["train"].stat().st_mtime_ns) == stamp

    (tmp_path / MARKER).unlink()  # as if generation had been cut short
    first["train"].unlink()
    ensure_avdigits(samples=20, seed=3, root=tmp_path, progress=False)
    assert (tmp_path / MARKER).is_file() and first["train"].is_file()
    assert image.stat().st_mtime_ns != stamp[0]


def test_cache_folder_follows_mmfuse_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MMFUSE_CACHE", str(tmp_path))
    assert avdigits_path(2000, 0) == tmp_path / "avdigits-2000-0"


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("mmfuse.data.avdigits.shutil.which", lambda name: None)
    with pytest.raises(mmfuse.MmfuseError, match="apt-get install espeak-ng"):
        make_avdigits(tmp_path, samples=20, progress=False)
