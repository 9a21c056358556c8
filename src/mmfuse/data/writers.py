"""Write video and audio files: the test-media corpus, the built-in dataset and the benchmarks.

Video goes through PyAV (its bundled FFmpeg has libx264, libvpx-vp9 and mpeg4). Frames may come
as one T×H×W×3 array or as any iterable of H×W×3 arrays, so a long video is written with
constant memory; audio is interleaved with the frames as they go for the same reason.

Audio goes through soundfile for the formats libsndfile writes losslessly or natively (wav, flac,
ogg/vorbis) and through PyAV for the ones that need an FFmpeg encoder (mp3, m4a, opus, aac).
"""

from __future__ import annotations

import fractions
import itertools
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
import soundfile as sf

# The audio codec each video container can hold, when the caller does not pick one.
DEFAULT_AUDIO_CODEC = {
    ".mp4": "aac",
    ".m4v": "aac",
    ".mov": "aac",
    ".mkv": "aac",
    ".webm": "libopus",  # WebM allows only Vorbis and Opus
    # AVI cannot hold negative timestamps, so an encoder delay (mp3: 1105 samples) makes its
    # muxer shift every stream: the video gained 2 empty frames. PCM has no delay.
    ".avi": "pcm_s16le",
}

# libopus encodes at these rates only; anything else is resampled to 48 kHz.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

# Variable-frame-rate timestamps are stored in milliseconds.
VFR_TIME_BASE = fractions.Fraction(1, 1000)

SOUNDFILE_AUDIO = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
}
# suffix -> (PyAV container format, codec)
PYAV_AUDIO = {
    ".mp3": ("mp3", "libmp3lame"),
    ".m4a": ("ipod", "aac"),
    ".opus": ("opus", "libopus"),
    ".aac": ("adts", "aac"),
}
AUDIO_SUFFIXES = tuple(SOUNDFILE_AUDIO) + tuple(PYAV_AUDIO)


def write_video(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 25,
    codec: str = "libx264",
    *,
    keyframe_interval: int | None = None,
    pix_fmt: str | None = None,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    audio_codec: str | None = None,
    timestamps: Iterable[float] | None = None,
    faststart: bool = False,
    crf: int | None = None,
    bit_rate: int | None = None,
    rotation: int = 0,
) -> Path:
    """Encode RGB uint8 frames (T×H×W×3, or an iterable of H×W×3) to `path`; return the path.

    keyframe_interval: a key frame exactly every N frames (scene-cut key frames turned off).
    timestamps: seconds per frame, strictly increasing: variable frame rate (ms precision).
    audio: N (mono) or N×C float32 in [-1, 1] at `audio_rate`, muxed beside the video.
    faststart: put the mp4 index (moov) before the data, as streaming servers do.
    crf / bit_rate: quality (libx264, libvpx-vp9) or target bits per second (any codec).
    rotation: display rotation in degrees counter-clockwise, stored as a display matrix
        (PyAV reads it back as `VideoFrame.rotation`).
    """
    path = Path(path)
    frame_iter = iter(frames)
    first = next(frame_iter, None)
    if first is None:
        raise ValueError(f"write_video({path}): no frames given; pass at least one H×W×3 frame")
    first = _check_frame(first)
    size = first.shape[:2]  # H, W
    pix_fmt = pix_fmt or _default_pix_fmt(codec, size[1], size[0])
    times = _check_video_args(path, codec, pix_fmt, size, timestamps)
    # Every frame gets an explicit pts on one clock: 1/fps, or milliseconds for variable
    # frame rate, so what a reader sees does not depend on PyAV's pts guessing.
    time_base = VFR_TIME_BASE if times is not None else 1 / _rate(fps)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = _video_stream(container, codec, fps, size, pix_fmt, keyframe_interval, crf)
        if bit_rate is not None:
            stream.codec_context.bit_rate = bit_rate
        stream.codec_context.time_base = time_base
        if rotation % 360:
            stream.set_display_rotation(rotation)
        sound = None
        if audio is not None:
            codec_a = audio_codec or _audio_codec(path.suffix.lower())
            sound = _AudioTrack(container, audio, audio_rate, codec_a)
        frames = _chain(first, frame_iter)
        _encode_frames(path, container, stream, frames, size, fps, time_base, times, sound)
        container.mux(stream.encode())  # flush the encoder's delayed frames
        if sound is not None:
            sound.finish()
    return path


def _video_stream(container, codec, fps, size, pix_fmt, keyframe_interval, crf):
    stream = container.add_stream(
        codec, rate=_rate(fps), options=_codec_options(codec, keyframe_interval, crf)
    )
    stream.width, stream.height, stream.pix_fmt = size[1], size[0], pix_fmt
    if keyframe_interval is not None:
        stream.codec_context.gop_size = keyframe_interval
    return stream


def _check_video_args(
    path: Path,
    codec: str,
    pix_fmt: str,
    size: tuple[int, int],
    timestamps: Iterable[float] | None,
) -> list[float] | None:
    """The timestamps, checked, once the sizes and container are known to fit the request."""
    height, width = size
    if codec == "libx264" and pix_fmt == "yuv420p" and (width % 2 or height % 2):
        raise ValueError(
            f"write_video({path}): libx264 with yuv420p needs even sizes, got {width}×{height}; "
            "pass pix_fmt='yuv444p' (or None to choose it), or use codec 'libvpx-vp9' or 'mpeg4'"
        )
    times = None if timestamps is None else _check_timestamps(timestamps)
    if times is not None and path.suffix.lower() == ".avi":
        raise ValueError(
            f"write_video({path}): AVI stores a constant frame rate only; "
            "write variable-frame-rate video as .mp4, .mkv or .webm"
        )
    return times


def _encode_frames(path, container, stream, frames, size, fps, time_base, times, sound) -> None:
    """Encode and mux every frame, the audio track kept level with the picture."""
    for index, frame in enumerate(frames):
        video_frame = av.VideoFrame.from_ndarray(_check_frame(frame, size), "rgb24")
        if times is None:
            video_frame.pts = index
        elif index < len(times):
            video_frame.pts = round(times[index] * 1000)
        else:
            raise ValueError(
                f"write_video({path}): {len(times)} timestamps for more frames; "
                "give one timestamp per frame"
            )
        video_frame.time_base = time_base
        container.mux(stream.encode(video_frame))
        if sound is not None:  # keep audio level with the video so the muxer buffers little
            end = times[index + 1] if times is not None and index + 1 < len(times) else None
            sound.write_until((index + 1) / fps if end is None else end)


def write_audio(
    path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str | None = None
) -> Path:
    """Write N (mono) or N×C float32 samples in [-1, 1] to `path`; the suffix picks the format.

    .wav / .flac / .ogg go through soundfile; `subtype` is a soundfile subtype such as
    "PCM_16" (default for wav and flac), "PCM_24" or "FLOAT". .mp3 / .m4a / .opus / .aac go
    through PyAV (libmp3lame, aac, libopus, aac in ADTS); opus below 48 kHz is written at the
    nearest rate libopus supports.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    samples = _check_samples(samples)
    if suffix in SOUNDFILE_AUDIO:
        file_format, default_subtype = SOUNDFILE_AUDIO[suffix]
        subtype = subtype or default_subtype
        if subtype.startswith("PCM"):
            # libsndfile wraps out-of-range floats around instead of clipping them
            samples = np.clip(samples, -1.0, 1.0)
        sf.write(str(path), samples, sample_rate, format=file_format, subtype=subtype)
        return path
    if suffix not in PYAV_AUDIO:
        raise ValueError(
            f"write_audio({path}): unknown audio suffix {suffix!r}; use one of {AUDIO_SUFFIXES}"
        )
    if subtype is not None:
        raise ValueError(
            f"write_audio({path}): subtype={subtype!r} applies to wav/flac/ogg only; "
            f"{suffix} is encoded with PyAV, leave subtype=None"
        )
    container_format, codec = PYAV_AUDIO[suffix]
    with av.open(str(path), "w", format=container_format) as container:
        track = _AudioTrack(container, samples, sample_rate, codec)
        track.finish()
    return path


class _AudioTrack:
    """An audio stream fed in pieces: `write_until(seconds)`, then `finish()`."""

    CHUNK = 4096  # samples per frame handed to PyAV (it re-frames to the codec's frame size)

    def __init__(self, container, samples: np.ndarray, sample_rate: int, codec: str):
        self.samples = _check_samples(samples)  # N×C
        self.sample_rate = sample_rate
        channels = self.samples.shape[1]
        if channels not in (1, 2):
            raise ValueError(f"audio has {channels} channels; give mono (N) or stereo (N×2)")
        rate = sample_rate
        if codec in ("libopus", "opus") and rate not in OPUS_RATES:
            rate = 48000  # PyAV's encoder resamples the frames to the stream's rate
        self.stream = container.add_stream(
            codec, rate=rate, layout="mono" if channels == 1 else "stereo"
        )
        self.container = container
        self.done = 0  # samples written so far

    def write_until(self, seconds: float) -> None:
        end = min(len(self.samples), round(seconds * self.sample_rate))
        while self.done < end:
            stop = min(end, self.done + self.CHUNK)
            # fltp frames are C×N; PyAV converts to the codec's own sample format
            chunk = np.ascontiguousarray(self.samples[self.done : stop].T)
            layout = "mono" if chunk.shape[0] == 1 else "stereo"
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = self.sample_rate
            frame.pts = self.done
            frame.time_base = fractions.Fraction(1, self.sample_rate)
            self.container.mux(self.stream.encode(frame))
            self.done = stop

    def finish(self) -> None:
        self.write_until(len(self.samples) / self.sample_rate)
        self.container.mux(self.stream.encode())  # flush


def _default_pix_fmt(codec: str, width: int, height: int) -> str:
    if codec == "libx264" and (width % 2 or height % 2):
        # 4:2:0 subsampling needs even sizes in x264; 4:4:4 (High 4:4:4 profile) has none,
        # and FFmpeg decodes it. vp9 and mpeg4 pad odd sizes themselves.
        return "yuv444p"
    return "yuv420p"


def _codec_options(codec: str, keyframe_interval: int | None, crf: int | None) -> dict[str, str]:
    options = {}
    if codec == "libvpx-vp9":
        # libvpx's defaults are tuned for quality at great cost in time; test media need speed
        options.update({"deadline": "realtime", "cpu-used": "8"})
    if keyframe_interval is not None:
        n = str(keyframe_interval)
        if codec == "libx264":
            # gop_size alone still lets x264 add key frames at scene cuts (seen with a moving
            # bar); fixing min-keyint and turning scenecut off gives exactly every N frames
            options["x264-params"] = f"keyint={n}:min-keyint={n}:scenecut=0"
        elif codec == "mpeg4":
            # FFmpeg's mpeg4 encoder adds scene-change I-frames unless the threshold is out of reach
            options["sc_threshold"] = "1000000000"
        else:
            options["keyint_min"] = n  # libvpx: kf_min_dist, so kf spacing is fixed
    if crf is not None:
        if codec not in ("libx264", "libvpx-vp9"):
            raise ValueError(f"crf applies to libx264 and libvpx-vp9, not {codec!r}; use bit_rate")
        options["crf"] = str(crf)
        if codec == "libvpx-vp9":
            options["b"] = "0"  # constant quality in libvpx needs the bit rate unset
    return options


def _audio_codec(suffix: str) -> str:
    if suffix not in DEFAULT_AUDIO_CODEC:
        raise ValueError(
            f"no default audio codec for {suffix!r} video; pass audio_codec= "
            f"(one of 'aac', 'libopus', 'libmp3lame') or use one of {tuple(DEFAULT_AUDIO_CODEC)}"
        )
    return DEFAULT_AUDIO_CODEC[suffix]


def _rate(fps: float) -> fractions.Fraction:
    return fractions.Fraction(fps).limit_denominator(1001)


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"video frames must be H×W×3 uint8 RGB, got shape {frame.shape} dtype {frame.dtype}"
        )
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"frame of size {frame.shape[:2]} after frames of size {size}")
    return np.ascontiguousarray(frame)


def _check_timestamps(timestamps: Iterable[float]) -> list[float]:
    times = [float(t) for t in timestamps]
    millis = [round(t * 1000) for t in times]
    if not times or millis[0] < 0 or any(b <= a for a, b in itertools.pairwise(millis)):
        raise ValueError(
            "timestamps must be seconds ≥ 0, strictly increasing by at least 1 ms, "
            f"got {times[:5]}{'…' if len(times) > 5 else ''}"
        )
    return times


def _check_samples(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"audio samples must be N or N×C with N > 0, got shape {samples.shape}")
    return samples


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]):
    yield first
    yield from rest
