"""avdigits: a generated audio-visual-text digits dataset made from real signals.

Ten classes, "0".."9". Every sample has four inputs, each corrupted on its own random stream so
that their errors are independent and fusing them pays:

- image: a real handwritten digit (scikit-learn's bundled 8×8 `load_digits`) upscaled to 48 px,
  affinely distorted (rotation, scale, shear, shift), with noise and an occluding rectangle or
  ellipse; written as a grayscale PNG.
- audio: the digit's word spoken by espeak-ng (one of `VOICES`, `SPEEDS`, `PITCHES`), shifted in
  time and mixed with coloured noise at an SNR in `SNR_DB`; 1 s, 16 kHz mono WAV.
- video: another handwriting sample of the digit moving over a noisy background with an
  occluder in most frames, carrying another utterance of the word (other voice, other noise)
  as its AAC track; 1 s, 10 fps, 48×48 H.264 MP4.
- text: a short caption that names the digit only sometimes (`CAPTION_RATES`), sometimes
  names a confusable wrong one, and otherwise says nothing about it.

Handwriting is split between train/val/test too, so a test image is never a train image
redistorted. Generation is deterministic in `(samples, seed)`: each sample draws from its own
generators, whatever the number of worker processes. Each distinct utterance is synthesised
once (in a thread pool) and mixed per sample.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image, ImageDraw

from mmfuse.data.audio import resample
from mmfuse.data.writers import write_audio, write_video
from mmfuse.errors import MmfuseError

VERSION = 2
MARKER = "avdigits.json"
SPLITS = ("train", "val", "test")
COLUMNS = ("image", "audio", "video", "text", "label")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# espeak-ng voices: accents and variants of its bundled English (all ship with the Debian
# package; mbrola voices would need extra downloads).
VOICES = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en+m3",
    "en+m7",
    "en+f2",
    "en-us+f4",
    "en+klatt",
    "en+croak",
)
SPEEDS = (120, 155, 190)  # words per minute (espeak-ng -s)
PITCHES = (25, 50, 75)  # 0..99 (espeak-ng -p)

SAMPLE_RATE = 16000
AUDIO_SECONDS = 1.0
IMAGE_SIZE = 48
VIDEO_SIZE = 48
VIDEO_GLYPH = 30  # side of the moving digit in video frames
VIDEO_FPS = 10
VIDEO_FRAMES = 10  # 1 s

# Corruption strengths, tuned so that each modality alone is clearly imperfect and fusion has
# something to add. `mmfuse demo` (1500 samples, small CNNs from scratch, 6 epochs) scores on the
# test split: image 0.84, audio 0.51, video frames 0.72, frames + audio track 0.79, all four
# fused 0.92. Speech is mixed at -24..0 dB: at the first setting tried (-13..5 dB) the audio
# CNN alone reached 0.95, leaving fusion nothing to show.
SNR_DB = (-24.0, 0.0)  # speech-to-noise ratio, uniform
ROTATION_DEG = 12.0
SCALE = (0.85, 1.1)
SHEAR = 0.2
SHIFT = 0.06  # fraction of the side
IMAGE_NOISE = (0.05, 0.25)  # Gaussian sigma on [0, 1] pixels
OCCLUSION = (0.2, 0.4)  # occluder side, fraction of the image side
VIDEO_OCCLUSION_P = 0.8  # chance that a video frame has an occluder
# Captions: named correctly, named wrongly (a confusable digit), or filler.
CAPTION_RATES = {"named": 0.55, "wrong": 0.1, "filler": 0.35}
CONFUSABLE = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}

NAMED_TEMPLATES = (
    "handwritten {word}",
    "the digit {num}",
    "a {word} written in ink",
    "form field showing {num}",
    "looks like a {word}",
    "scanned {num} from a form",
    "number {num}, faint",
    "{word}, written quickly",
    "probably a {num}",
)
FILLERS = (
    "a handwritten sample",
    "scanned form field",
    "ink on paper, low contrast",
    "a blurry character",
    "a noisy snapshot",
    "a box from a postal code",
    "an image from the archive",
    "handwriting, partly covered",
    "field from a survey sheet",
    "a quick scribble",
    "a cropped character",
    "somebody wrote this",
)

# Independent random streams per sample: one per modality.
_IMAGE, _AUDIO, _VIDEO, _TEXT = range(4)

Utterance = tuple[str, str, int, int]  # (word, voice, speed, pitch)


def avdigits_path(samples: int = 2000, seed: int = 0) -> Path:
    """`<cache>/avdigits-<samples>-<seed>`, the cache being mmfuse's (`$MMFUSE_CACHE`, ...)."""
    # Imported here: mmfuse.train imports mmfuse.data, so a top-level import could loop.
    from mmfuse.data.cache import default_cache_dir

    return default_cache_dir() / f"avdigits-{samples}-{seed}"


def ensure_avdigits(
    samples: int = 2000, seed: int = 0, root: str | Path | None = None, progress: bool = True
) -> dict[str, Path]:
    """The split manifests of avdigits under `root` (default `avdigits_path`), generated first
    unless a complete generation of the same `(samples, seed, version)` is already there."""
    root = Path(root) if root is not None else avdigits_path(samples, seed)
    if _read_marker(root) == _marker(samples, seed):
        return _manifest_paths(root)
    return make_avdigits(root, samples=samples, seed=seed, progress=progress)


def make_avdigits(
    out_dir: str | Path,
    *,
    samples: int = 2000,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write `out_dir/{train,val,test}.csv` and the media under `out_dir/media/`; return the
    manifest paths by split. Columns: image, audio, video, text, label (paths relative).

    Classes are balanced and every class is split by `splits`. `workers` processes write the
    files (default: the CPUs this process may use). The marker `avdigits.json` is written
    last, so a folder without it is an interrupted generation.
    """
    _check_args(samples, splits)
    if shutil.which("espeak-ng") is None:
        raise MmfuseError(
            "avdigits speaks its digits with espeak-ng, which is not on PATH; "
            "install it with `apt-get install espeak-ng` (or `make setup`)"
        )
    out = Path(out_dir)
    (out / MARKER).unlink(missing_ok=True)  # from here on the folder is incomplete
    for modality in ("image", "audio", "video"):
        (out / "media" / modality).mkdir(parents=True, exist_ok=True)
    workers = workers or _usable_cpus()

    tasks, split_of = _plan(samples, seed, splits)
    needed = sorted({key for task in tasks for key in (task.speech, task.video_speech)})
    clean = _synthesize_all(needed, threads=max(4, 2 * workers), progress=progress)
    jobs = [(out, t, clean[t.speech], clean[t.video_speech]) for t in tasks]
    rows = dict(zip([t.index for t in tasks], _run(jobs, workers, progress)))

    paths = _manifest_paths(out)
    for split, path in paths.items():
        frame = pd.DataFrame([rows[i] for i in split_of[split]], columns=list(COLUMNS))
        frame.to_csv(path, index=False)
    (out / MARKER).write_text(json.dumps(_marker(samples, seed)) + "\n")
    return paths


def speak(word: str, voice: str, speed: int = 155, pitch: int = 50) -> np.ndarray:
    """`word` said by espeak-ng: float32 mono at 16 kHz, silence trimmed, peak 1."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) <= 44:  # 44 bytes: a WAV header alone
        raise MmfuseError(
            f"espeak-ng gave no audio for {word!r} with voice {voice!r}: "
            f"{proc.stderr.decode(errors='replace').strip() or 'empty output'}; "
            "list the installed voices with `espeak-ng --voices=en`"
        )
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")  # 22050 Hz mono
    data = resample(data[None, :], rate, SAMPLE_RATE)[0]
    loud = np.flatnonzero(np.abs(data) > 0.02 * np.abs(data).max())
    if loud.size == 0:
        raise MmfuseError(f"espeak-ng gave silence for {word!r} with voice {voice!r}")
    pad = SAMPLE_RATE // 100  # keep 10 ms around the speech
    data = data[max(0, loud[0] - pad) : loud[-1] + pad]
    return (data / np.abs(data).max()).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Planning: which handwriting, utterances and caption each sample gets, drawn up front so the
# utterances can be synthesised once, before the files are written.


@dataclass
class _Task:
    index: int
    label: int
    digit: np.ndarray  # 8×8 in [0, 16], for the image
    video_digit: np.ndarray  # another 8×8 sample of the same class, for the video
    speech: Utterance  # for the audio file
    video_speech: Utterance  # another voice, for the video's track
    text: str
    rngs: list[np.random.Generator]  # one per modality, already used for the plan


def _plan(
    samples: int, seed: int, splits: tuple[float, float, float]
) -> tuple[list[_Task], dict[str, list[int]]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng([seed, samples])
    labels = rng.permutation(np.arange(samples) % 10)
    cuts = np.cumsum(splits)
    # Stratified split: each sample's place within its class (random, in (0, 1)) orders the
    # whole set, which is then cut at the split fractions, so every split gets its share of
    # every class and the split sizes are exact.
    place = np.empty(samples)
    for k in range(10):
        members = rng.permutation(np.flatnonzero(labels == k))
        place[members] = (np.arange(len(members)) + 0.5) / len(members)
    order = rng.permutation(samples)  # ties between classes fall in random order
    order = order[np.argsort(place[order], kind="stable")]
    split_of: dict[str, list[int]] = {}
    split_by_index = np.empty(samples, dtype=int)
    for s, (lo, hi) in enumerate(_bounds(cuts, samples)):
        if hi == lo:
            raise ValueError(
                f"samples={samples} with splits={splits} leaves the {SPLITS[s]!r} split empty; "
                "use more samples or larger fractions"
            )
        split_of[SPLITS[s]] = sorted(order[lo:hi].tolist())
        split_by_index[order[lo:hi]] = s
    # Handwriting is split the same way, so no 8×8 sample shows up in two splits:
    # (split, class) → rows of load_digits.
    pools: dict[tuple[int, int], np.ndarray] = {}
    for k in range(10):
        writers = rng.permutation(np.flatnonzero(digits.target == k))
        for s, (lo, hi) in enumerate(_bounds(cuts, len(writers))):
            pools[s, k] = writers[lo:hi]

    tasks = []
    for i in range(samples):
        k = int(labels[i])
        rngs = [np.random.default_rng([seed, i, stream]) for stream in range(4)]
        pool = pools[split_by_index[i], k]
        if len(pool) < 2:
            raise ValueError(
                f"splits={splits} leaves the {SPLITS[split_by_index[i]]!r} split fewer than 2 "
                f"handwriting samples of class {k}; use larger fractions"
            )
        image_row, video_row = rngs[_IMAGE].choice(pool, size=2, replace=False)
        voice, video_voice = rngs[_AUDIO].choice(len(VOICES), size=2, replace=False)
        tasks.append(
            _Task(
                index=i,
                label=k,
                digit=digits.images[image_row],
                video_digit=digits.images[video_row],
                speech=_utterance(rngs[_AUDIO], k, int(voice)),
                video_speech=_utterance(rngs[_VIDEO], k, int(video_voice)),
                text=_caption(rngs[_TEXT], k),
                rngs=rngs,
            )
        )
    return tasks, split_of


def _bounds(cuts: np.ndarray, n: int) -> list[tuple[int, int]]:
    edges = [0, *(min(n, round(c * n)) for c in cuts)]
    edges[-1] = n
    return list(itertools.pairwise(edges))


def _utterance(rng: np.random.Generator, label: int, voice: int) -> Utterance:
    speed = int(rng.choice(SPEEDS))
    pitch = int(rng.choice(PITCHES))
    return (WORDS[label], VOICES[voice], speed, pitch)


def _caption(rng: np.random.Generator, label: int) -> str:
    kind = rng.choice(list(CAPTION_RATES), p=list(CAPTION_RATES.values()))
    if kind == "filler":
        return str(rng.choice(FILLERS))
    digit = label if kind == "named" else CONFUSABLE[label]
    template = str(rng.choice(NAMED_TEMPLATES))
    caption = template.format(word=WORDS[digit], num=digit)
    if rng.random() < 0.3:  # sometimes with filler around it
        caption = f"{rng.choice(FILLERS)}; {caption}"
    return caption


def _synthesize_all(keys: list[Utterance], threads: int, progress: bool) -> dict:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = pool.map(lambda key: speak(*key), keys)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(keys), desc="avdigits: speaking", leave=False)
        return dict(zip(keys, results))


# ---------------------------------------------------------------------------------------------
# Rendering one sample: runs in worker processes, from the task alone.


def _run(jobs: list, workers: int, progress: bool):
    def track(results):
        if not progress:
            return list(results)
        from tqdm.auto import tqdm

        return list(tqdm(results, total=len(jobs), desc="avdigits: writing", leave=False))

    if workers <= 1:
        return track(map(_render, jobs))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return track(pool.map(_render, jobs, chunksize=8))


def _render(job: tuple[Path, _Task, np.ndarray, np.ndarray]) -> dict:
    """Write one sample's image, audio and video; return its manifest row."""
    out, task, speech, video_speech = job
    rngs = task.rngs
    stem = f"{task.index:05d}"
    row = {
        "image": f"media/image/{stem}.png",
        "audio": f"media/audio/{stem}.wav",
        "video": f"media/video/{stem}.mp4",
        "text": task.text,
        "label": task.label,
    }
    image = _image(rngs[_IMAGE], task.digit)
    Image.fromarray(image).save(out / row["image"])
    write_audio(out / row["audio"], _mix(rngs[_AUDIO], speech), SAMPLE_RATE)
    write_video(
        out / row["video"],
        _video_frames(rngs[_VIDEO], task.video_digit),
        fps=VIDEO_FPS,
        codec="libx264",
        # Every frame a key frame: x264's inter prediction (motion search across its frame
        # threads) made reruns decode to slightly different pixels; intra-only reruns do not.
        keyframe_interval=1,
        audio=_mix(rngs[_VIDEO], video_speech),
        audio_rate=SAMPLE_RATE,
        audio_codec="aac",
    )
    return row


def _glyph(rng: np.random.Generator, digit: np.ndarray, size: int) -> np.ndarray:
    """An 8×8 digit upscaled to size×size and affinely distorted: float32 ink in [0, 1]."""
    src = Image.fromarray(np.uint8(digit * (255 / 16))).resize((size, size), Image.BICUBIC)
    angle = math.radians(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shear = np.array([[1.0, rng.uniform(-SHEAR, SHEAR)], [0.0, 1.0]])
    # output = centre + shift + forward @ (input - centre)
    forward = rotate @ shear * rng.uniform(*SCALE)
    shift = rng.uniform(-SHIFT, SHIFT, size=2) * size
    centre = np.full(2, size / 2)
    inverse = np.linalg.inv(forward)  # PIL maps each output pixel back to its input
    offset = centre - inverse @ (centre + shift)
    coeffs = (*inverse[0], offset[0], *inverse[1], offset[1])
    warped = src.transform((size, size), Image.AFFINE, coeffs, Image.BILINEAR, fillcolor=0)
    return np.asarray(warped, dtype=np.float32) / 255


def _occluder(rng: np.random.Generator, size: int, side: tuple[float, float]) -> np.ndarray:
    """A size×size mask (float32, 1 = covered) holding one rectangle or ellipse."""
    w, h = (rng.uniform(*side, size=2) * size).astype(int)
    x, y = rng.integers(-w // 3, size - 2 * w // 3), rng.integers(-h // 3, size - 2 * h // 3)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
    shape((int(x), int(y), int(x + w), int(y + h)), fill=255)
    return np.asarray(mask, dtype=np.float32) / 255


def _image(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    """H×W uint8: ink on a background of random tone, noise, one occluder."""
    glyph = _glyph(rng, digit, IMAGE_SIZE)
    background, ink = rng.uniform(0.0, 0.35), rng.uniform(0.55, 1.0)
    image = background + (ink - background) * glyph
    image += rng.normal(0.0, rng.uniform(*IMAGE_NOISE), size=image.shape)
    mask = _occluder(rng, IMAGE_SIZE, OCCLUSION)
    image = image * (1 - mask) + rng.uniform(0.0, 1.0) * mask
    return np.uint8(np.clip(image, 0, 1) * 255 + 0.5)


def _video_frames(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    """T×H×W×3 uint8: the digit gliding over a noisy tinted background, occluders per frame."""
    size, side = VIDEO_SIZE, VIDEO_GLYPH
    glyph = _glyph(rng, digit, side)[..., None]  # S×S×1
    background = rng.uniform(0.0, 0.4, size=3) + rng.normal(0.0, 0.08, size=(size, size, 1))
    ink = rng.uniform(0.55, 1.0, size=3)
    start, end = rng.uniform(0, size - side, size=(2, 2))
    sigma = rng.uniform(*IMAGE_NOISE)
    frames = np.empty((VIDEO_FRAMES, size, size, 3), np.uint8)
    for t in range(VIDEO_FRAMES):
        x, y = np.round(start + (end - start) * t / (VIDEO_FRAMES - 1)).astype(int)
        frame = background + rng.normal(0.0, sigma, size=(size, size, 3))
        patch = frame[y : y + side, x : x + side]
        frame[y : y + side, x : x + side] = patch * (1 - glyph) + ink * glyph
        if rng.random() < VIDEO_OCCLUSION_P:
            mask = _occluder(rng, size, OCCLUSION)[..., None]
            frame = frame * (1 - mask) + rng.uniform(0.0, 1.0, size=3) * mask
        frames[t] = np.uint8(np.clip(frame, 0, 1) * 255 + 0.5)
    return frames


def _mix(rng: np.random.Generator, speech: np.ndarray) -> np.ndarray:
    """1 s of `speech` at a random offset in coloured noise at a random SNR, random level."""
    n = round(AUDIO_SECONDS * SAMPLE_RATE)
    speech = speech[:n]
    offset = int(rng.integers(0, n - len(speech) + 1))
    signal = np.zeros(n, np.float64)
    signal[offset : offset + len(speech)] = speech
    # Noise from white (0) through pink (1) to brown (2): shape the spectrum by f^(-colour/2).
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum * freqs ** (-rng.uniform(0.0, 2.0) / 2), n)
    snr_db = rng.uniform(*SNR_DB)
    speech_power = np.mean(speech.astype(np.float64) ** 2)
    noise *= math.sqrt(speech_power / 10 ** (snr_db / 10) / np.mean(noise**2))
    mix = signal + noise
    mix *= rng.uniform(0.3, 0.95) / np.abs(mix).max()
    return mix.astype(np.float32)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_args(samples: int, splits) -> None:
    if samples < 10:
        raise ValueError(f"samples must be at least 10 (one per class), got {samples}")
    if len(splits) != 3 or min(splits) < 0 or not math.isclose(sum(splits), 1.0):
        raise ValueError(
            f"splits must be three fractions (train, val, test) summing to 1, got {splits}"
        )


def _marker(samples: int, seed: int) -> dict:
    return {"samples": samples, "seed": seed, "version": VERSION}


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _manifest_paths(root: Path) -> dict[str, Path]:
    return {split: root / f"{split}.csv" for split in SPLITS}
