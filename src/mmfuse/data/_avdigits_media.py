"""How one avdigits sample is made: its utterances, caption, image and video, each corrupted.

`render` writes a sample's files from its `SampleTask` alone, so it runs in worker processes;
`mmfuse.data.avdigits` plans the tasks and writes the manifests.
"""

from __future__ import annotations

import io
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from mmfuse.data.audio import resample
from mmfuse.data.writers import write_audio, write_video
from mmfuse.errors import MmfuseError

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
IMAGE_STREAM, AUDIO_STREAM, VIDEO_STREAM, TEXT_STREAM = range(4)

Utterance = tuple[str, str, int, int]  # (word, voice, speed, pitch)


@dataclass
class SampleTask:
    """What one sample is made of, drawn up front so utterances are synthesised only once."""

    index: int
    label: int
    digit: np.ndarray  # 8×8 in [0, 16], for the image
    video_digit: np.ndarray  # another 8×8 sample of the same class, for the video
    speech: Utterance  # for the audio file
    video_speech: Utterance  # another voice, for the video's track
    text: str
    rngs: list[np.random.Generator]  # one per modality, already used for the plan


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


def utterance(rng: np.random.Generator, label: int, voice: int) -> Utterance:
    """The digit's word in `VOICES[voice]` at a random speed and pitch."""
    speed = int(rng.choice(SPEEDS))
    pitch = int(rng.choice(PITCHES))
    return (WORDS[label], VOICES[voice], speed, pitch)


def caption(rng: np.random.Generator, label: int) -> str:
    """A caption naming the digit, a confusable wrong digit, or nothing (`CAPTION_RATES`)."""
    kind = rng.choice(list(CAPTION_RATES), p=list(CAPTION_RATES.values()))
    if kind == "filler":
        return str(rng.choice(FILLERS))
    digit = label if kind == "named" else CONFUSABLE[label]
    template = str(rng.choice(NAMED_TEMPLATES))
    text = template.format(word=WORDS[digit], num=digit)
    if rng.random() < 0.3:  # sometimes with filler around it
        text = f"{rng.choice(FILLERS)}; {text}"
    return text


def render(job: tuple[Path, SampleTask, np.ndarray, np.ndarray]) -> dict:
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
    image = _image(rngs[IMAGE_STREAM], task.digit)
    Image.fromarray(image).save(out / row["image"])
    write_audio(out / row["audio"], _mix(rngs[AUDIO_STREAM], speech), SAMPLE_RATE)
    write_video(
        out / row["video"],
        _video_frames(rngs[VIDEO_STREAM], task.video_digit),
        fps=VIDEO_FPS,
        codec="libx264",
        # Every frame a key frame: x264's inter prediction (motion search across its frame
        # threads) made reruns decode to slightly different pixels; intra-only reruns do not.
        keyframe_interval=1,
        audio=_mix(rngs[VIDEO_STREAM], video_speech),
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
