"""How one surveillance clip is made: a camera's static scene, slow passers-by, a steady
background sound, and optionally an anomaly (an object bursting in, a crash/glass/shout).

`render_clip` writes one MP4 (H.264 frames + AAC track) from a `Clip` alone; the scenes are
fixed per camera so that normal clips from one camera resemble each other, as real footage does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmfuse.data.writers import write_video

SAMPLE_RATE = 16000
FPS = 10
SECONDS = 2.0
WIDTH, HEIGHT = 96, 72
CAMERAS = 4
KINDS = ("visual", "acoustic", "both")
SOUNDS = ("crash", "glass", "shout")
# Loudness of an acoustic event over the background's RMS, in dB (uniform).
EVENT_DB = (12.0, 22.0)


@dataclass(frozen=True)
class Clip:
    index: int
    camera: int
    kind: str  # "normal" or one of KINDS
    seed: int  # the dataset's seed; the clip's generator is (seed, index)


def scene(camera: int, seed: int) -> tuple[np.ndarray, float]:
    """H×W×3 float background of `camera` (sky, ground, a few blocks) and its hum frequency."""
    rng = np.random.default_rng([seed, 1_000_000 + camera])
    frame = np.empty((HEIGHT, WIDTH, 3))
    horizon = int(rng.integers(HEIGHT // 3, HEIGHT // 2))
    frame[:horizon] = rng.uniform(0.45, 0.8, 3)
    frame[horizon:] = rng.uniform(0.15, 0.45, 3)
    for _ in range(int(rng.integers(3, 6))):
        w, h = int(rng.integers(10, 30)), int(rng.integers(10, horizon))
        x = int(rng.integers(0, WIDTH - w))
        frame[horizon - h : horizon, x : x + w] = rng.uniform(0.2, 0.6, 3)
    return frame, float(rng.uniform(55.0, 120.0))


def render_clip(path: Path, clip: Clip) -> None:
    video, audio = clip_media(clip)
    write_video(
        path,
        video,
        fps=FPS,
        codec="libx264",
        keyframe_interval=1,  # intra-only: reruns decode to the same pixels (see avdigits)
        audio=audio,
        audio_rate=SAMPLE_RATE,
        audio_codec="aac",
    )


def clip_media(clip: Clip, steady: tuple[float, float, float] | None = None):
    """The clip's T×H×W×3 uint8 frames and its mono float32 track at `SAMPLE_RATE`.

    `steady`: `(lighting, sound level, hum share)` to use instead of the clip's own draws, so
    that clips played back to back as one recording do not jump in brightness or loudness at
    every joint (the draws are still made: the rest of the clip is as without it)."""
    rng = np.random.default_rng([clip.seed, clip.index])
    background, hum = scene(clip.camera, clip.seed)
    n_frames, n_audio = round(SECONDS * FPS), round(SECONDS * SAMPLE_RATE)
    light, level, share = steady or (None, None, None)
    frames = _normal_frames(rng, background, n_frames, light)
    audio = _ambient(rng, hum, n_audio, level, share)
    if clip.kind in ("visual", "both"):
        _burst_in(rng, frames)
    if clip.kind in ("acoustic", "both"):
        audio = audio + _event(rng, audio, SOUNDS[int(rng.integers(len(SOUNDS)))])
    audio *= 0.9 / max(np.abs(audio).max(), 0.9)  # clip-free, never louder than it was
    video = np.uint8(np.clip(frames, 0, 1) * 255 + 0.5)
    return video, audio.astype(np.float32)


def steady_levels(camera: int, seed: int) -> tuple[float, float, float]:
    """A long recording's lighting, sound level and hum share, drawn once per camera."""
    rng = np.random.default_rng([seed, 2_000_000 + camera])
    return rng.uniform(0.9, 1.1), rng.uniform(0.03, 0.08), rng.uniform(0.3, 1.0)


def _normal_frames(rng, background: np.ndarray, n: int, light: float | None) -> np.ndarray:
    """T×H×W×3: the scene under a slight lighting change, 1-2 passers-by walking slowly."""
    drawn = rng.uniform(0.9, 1.1)
    frames = np.repeat(background[None] * (drawn if light is None else light), n, axis=0)
    for _ in range(int(rng.integers(1, 3))):
        w, h = int(rng.integers(4, 7)), int(rng.integers(10, 16))
        x0, y = rng.uniform(0, WIDTH - w), int(rng.integers(HEIGHT // 2, HEIGHT - h))
        speed = rng.uniform(-1.5, 1.5)  # px per frame
        colour = rng.uniform(0.05, 0.35, 3)
        for t in range(n):
            x = int(np.clip(x0 + speed * t, 0, WIDTH - w))
            frames[t, y : y + h, x : x + w] = colour
    frames += rng.normal(0.0, 0.02, frames.shape)  # sensor noise
    return frames


def _burst_in(rng, frames: np.ndarray) -> None:
    """A large saturated object rushes in from a side at an onset and stays in view."""
    n = len(frames)
    onset = int(rng.integers(round(0.1 * n), round(0.5 * n)))
    size = int(rng.integers(26, 40))
    colour = np.zeros(3)
    colour[rng.permutation(3)[:2]] = [rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.3)]
    y = int(rng.integers(0, HEIGHT - size))
    from_left = rng.random() < 0.5
    stop = rng.uniform(0.15, 0.6) * (WIDTH - size)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= (size / 2) ** 2
    for t in range(onset, n):
        travelled = min(-size + 12.0 * (t - onset + 1), stop)
        x = int(travelled if from_left else WIDTH - size - travelled)
        x0, x1 = max(x, 0), min(x + size, WIDTH)
        if x1 <= x0:
            continue
        patch = frames[t, y : y + size, x0:x1]
        mask = disc[:, x0 - x : x1 - x]
        patch[mask] = colour


def _ambient(rng, hum: float, n: int, level: float | None, share: float | None) -> np.ndarray:
    """Steady background: brownish noise plus a mains-like hum with two harmonics."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum * freqs ** -rng.uniform(0.6, 1.0), n)
    noise /= np.sqrt(np.mean(noise**2))
    t = np.arange(n) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * hum * h * t + rng.uniform(0, 6.3)) / h for h in (1, 2, 3))
    drawn_level, drawn_share = rng.uniform(0.03, 0.08), rng.uniform(0.3, 1.0)
    level = drawn_level if level is None else level
    return level * (noise + (drawn_share if share is None else share) * tone)


def _event(rng, ambient: np.ndarray, sound: str) -> np.ndarray:
    """A loud event (crash, glass, shout) at a random onset, `EVENT_DB` over the ambient."""
    n = len(ambient)
    length = int(rng.uniform(0.3, 0.7) * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    if sound == "crash":  # broadband burst, fast decay
        body = rng.standard_normal(length) * np.exp(-t / rng.uniform(0.06, 0.2))
    elif sound == "glass":  # high inharmonic partials ringing, a few strikes
        body = sum(
            np.sin(2 * np.pi * rng.uniform(2500, 6500) * t) * np.exp(-t / rng.uniform(0.05, 0.25))
            for _ in range(6)
        )
        body = body + np.roll(body, int(rng.integers(800, 3000))) * 0.6
    else:  # shout: a voiced harmonic series with vibrato and a swell
        f0 = rng.uniform(180, 380) * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        body = sum(np.sin(k * phase) / k for k in range(1, 9)) * np.sin(np.pi * t / t[-1])
    body = body / np.sqrt(np.mean(body**2))
    level = np.sqrt(np.mean(ambient**2)) * 10 ** (rng.uniform(*EVENT_DB) / 20)
    out = np.zeros(n)
    onset = int(rng.integers(0, n - length))
    out[onset : onset + length] = body * level
    return out
