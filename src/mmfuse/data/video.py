"""Video reading with PyAV: metadata, frame sampling and the audio track of the same window.

A read returns every frame it was asked for or raises `MediaError`: FFmpeg (through PyAV or
OpenCV) happily stops at the 82nd of 300 promised frames without an exception, so every target
frame is checked against what the demuxer and decoder really delivered.

How frames are reached: a probe demuxes the file once (no decoding, ~1 ms per 100 frames) to learn
every frame's timestamp and where the key frames are. For each wanted frame the reader then
decides between decoding on from where the decoder stands and seeking to the key frame before it,
by counting the frames each way. With sparse key frames (x264's default: one per 250 frames)
that means decoding straight through; with dense ones it means seeking.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging
import numpy as np
import torch

# Frame conversion and time arithmetic live in private modules; they are part of this
# module's public face (see __all__).
from mmfuse.data._frames import frame_to_rgb, stack_chw
from mmfuse.data._video_times import SAMPLING_MODES, sample_times, sliding_windows
from mmfuse.data.audio import decode_audio_stream, finish_audio, too_long
from mmfuse.data.budgets import Budgets, resolve
from mmfuse.data.image import check_image_size
from mmfuse.data.modalities import (
    DEFAULT_MAX_BYTES,
    check_file,
    media_errors_only,
    refuse_other_modality,
    unreadable,
)
from mmfuse.errors import MediaError

# PyAV's Python logging callback can deadlock with threads (PyAV issues #751, #1191); keep it
# off explicitly even if a user's code turned it on.
av.logging.set_level(None)

# A seek costs about as much as decoding this many frames: the demuxer resets and the flushed
# decoder must fill its pipeline again before the first frame comes out (measured on x264
# 320×240 clips: seek + first frame 2.3 ms, one more frame in sequence 0.22 ms).
SEEK_COST_FRAMES = 10
# Pixels up to which a video decodes on one thread.
SMALL_PICTURE = 640 * 480


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns without decoding. Sizes are as displayed (after rotation)."""

    path: str
    width: int
    height: int
    fps: float
    duration: float  # seconds, as the header says
    frame_count: int  # as the header says (or as counted when the header is silent)
    decodable_frames: int  # frames the demuxer really finds
    has_audio: bool
    keyframe_interval: float  # mean frames between key frames
    rotation: int  # degrees counter-clockwise to display upright
    codec: str
    frame_times: tuple[float, ...]  # presentation time of every frame, sorted, from 0
    keyframe_indices: tuple[int, ...]  # indices into frame_times

    @property
    def truncated(self) -> bool:
        return self.decodable_frames < self.frame_count


@dataclass
class VideoClip:
    frames: torch.Tensor  # T×C×H×W uint8
    timestamps: torch.Tensor  # T float64 seconds from the start of the video
    audio: torch.Tensor | None = None  # N (mono) or C×N float32, same time window
    sample_rate: int | None = None
    start: float = 0.0  # the window the frames were sampled from
    end: float = 0.0


@media_errors_only("video")
def probe_video(
    path: str | Path,
    *,
    budgets: Budgets | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> VideoInfo:
    """Metadata of a video file; cached per file path, size and modification time.

    A frame over the image budgets (`budgets`, default `Budgets.from_env()`: pixels, aspect
    ratio) raises `MediaError("too-large")` before any frame is decoded.
    """
    path = check_file(path, max_bytes)
    st = path.stat()
    return _probe_cached(str(path), st.st_size, st.st_mtime_ns, resolve(budgets))


@media_errors_only("video")
def frame_size(path: str | Path, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[int, int]:
    """(width, height) of the video stream's frames as stored, from the header (no decoding)."""
    path = check_file(path, max_bytes)
    container = _open(path)
    with container:
        vs = _video_stream(container, path)
        return vs.codec_context.width, vs.codec_context.height


@functools.lru_cache(maxsize=512)
def _probe_cached(path: str, size: int, mtime_ns: int, budgets: Budgets) -> VideoInfo:
    container = _open(path)
    with container:
        vs = _video_stream(container, path)
        # The demuxer knows the frame size: refuse a huge one before the decoder allocates it.
        check_image_size(path, (vs.codec_context.width, vs.codec_context.height), budgets)
        tb = vs.time_base
        start_pts = vs.start_time or 0
        pts, keyframe_pts = _demux_timestamps(container, vs, path)
        key_idx = sorted({bisect.bisect_left(pts, k) for k in keyframe_pts}) or [0]
        times = tuple(float((p - start_pts) * tb) for p in pts)
        rate = vs.average_rate or vs.guessed_rate
        fps = float(rate) if rate else (len(pts) - 1) / max(times[-1], 1e-9)
        header_frames = vs.frames or 0
        frame_count = header_frames if header_frames > 0 else len(pts)
        if vs.duration is not None:
            header_duration = float(vs.duration * tb)
        elif container.duration is not None:
            header_duration = container.duration / av.time_base  # may include a longer audio
        else:
            header_duration = times[-1] + 1.0 / fps
        # A header silent about frame count still gives a duration to check against.
        if header_frames == 0 and times[-1] + 1.0 / fps < header_duration - 0.5:
            frame_count = max(frame_count, round(header_duration * fps))
        # The picture's own extent when every frame is there; the promise when it is not, so
        # that sampling reaches for the missing frames and fails loudly.
        last_gap = times[-1] - times[-2] if len(times) > 1 else 1.0 / fps
        complete = len(pts) >= frame_count
        duration = times[-1] + min(last_gap, 1.0 / fps) if complete else header_duration
        rotation = _rotation(container, vs)
        w, h = vs.codec_context.width, vs.codec_context.height
        if rotation % 180 != 0:
            w, h = h, w
        return VideoInfo(
            path=path,
            width=w,
            height=h,
            fps=fps,
            duration=duration,
            frame_count=frame_count,
            decodable_frames=len(pts),
            has_audio=bool(container.streams.audio),
            keyframe_interval=len(pts) / len(key_idx),
            rotation=rotation,
            codec=vs.codec_context.name,
            frame_times=times,
            keyframe_indices=tuple(key_idx),
        )


@media_errors_only("video")
def read_video(
    path: str | Path,
    num_frames: int = 8,
    *,
    start: float | None = None,
    end: float | None = None,
    mode: str = "uniform",
    generator: torch.Generator | None = None,
    size: tuple[int, int] | None = None,
    strategy: str = "auto",
    with_audio: bool = False,
    audio_rate: int | None = 16000,
    mono: bool = True,
    budgets: Budgets | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> VideoClip:
    """Sample `num_frames` frames from `[start, end)` seconds (default: the whole video).

    `size=(height, width)` scales frames during colour conversion (cheaper than afterwards).
    `strategy` is "auto" (per frame: seek or decode on, whichever decodes fewer frames),
    "seek" or "sequential" (decode straight through). With `with_audio`, the audio track of the
    same window comes back too (`audio=None` when the file has none). Only the sampled frames
    are converted and kept. Budgets (`budgets`, default `Budgets.from_env()`) are checked from
    the header before decoding: each frame against the image budgets, `num_frames` × the
    returned frame's pixels against `video_pixels`, the audio window against `audio_seconds`.
    """
    if strategy not in ("auto", "seek", "sequential"):
        raise ValueError(f"unknown strategy {strategy!r}; valid: auto, seek, sequential")
    limits = resolve(budgets)
    info = probe_video(path, budgets=limits, max_bytes=max_bytes)
    _check_clip_size(info, num_frames, size, limits)
    start = 0.0 if start is None else float(start)
    end = info.duration if end is None else float(end)
    if not 0 <= start < end:
        raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
    if start >= info.duration:
        raise MediaError(
            path, "too-short", f"window starts at {start:.3f} s, video is {info.duration:.3f} s"
        )
    times = sample_times(start, min(end, info.duration), num_frames, mode, generator)
    indices = [_frame_at(info, t) for t in times]
    end = min(end, info.duration)
    if with_audio and info.has_audio and end - start > limits.audio_seconds:
        raise too_long(path, end - start, limits.audio_seconds)
    frames, stamps = _decode_frames(info, indices, strategy, size)
    clip = VideoClip(
        frames=stack_chw(frames),  # T×C×H×W
        timestamps=torch.tensor(stamps, dtype=torch.float64),
        start=start,
        end=end,
    )
    if with_audio and info.has_audio:
        clip.audio, clip.sample_rate = _read_track(
            info.path, clip.start, clip.end, audio_rate, mono
        )
    return clip


def _check_clip_size(
    info: VideoInfo, num_frames: int, size: tuple[int, int] | None, budgets: Budgets
) -> None:
    h, w = size if size is not None else (info.height, info.width)
    if num_frames * h * w > budgets.video_pixels:
        raise MediaError(
            info.path,
            "too-large",
            f"{num_frames} frames of {w}×{h} = {num_frames * h * w} pixels is over the "
            f"{budgets.video_pixels}-pixel video budget; sample fewer or smaller frames "
            f"(size=), or {budgets.how_to_raise('video_pixels')}",
        )


def _demux_timestamps(container, vs, path: str) -> tuple[list[int], list[int]]:
    """Sorted presentation timestamps of every packet, and those of the key frames."""
    pts: list[int] = []
    keyframe_pts: list[int] = []
    try:
        for packet in container.demux(vs):
            if packet.pts is None:  # the flush packet at the end
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframe_pts.append(packet.pts)
    except av.FFmpegError:
        pass  # a damaged tail: what was found before it is what can be decoded
    if not pts:
        raise MediaError(path, "truncated", "the video stream holds no frames")
    pts.sort()
    return pts, keyframe_pts


def _frame_at(info: VideoInfo, t: float) -> int:
    """Index of the frame on screen at time t; past the decodable end is an error."""
    i = bisect.bisect_right(info.frame_times, t + 1e-9) - 1
    last = len(info.frame_times) - 1
    if i >= last and info.truncated and t >= info.frame_times[last] + 1.5 / info.fps:
        raise MediaError(
            info.path,
            "truncated",
            f"frame at {t:.3f} s requested, but only {info.decodable_frames} of the "
            f"{info.frame_count} frames the header promises can be decoded "
            f"(up to {info.frame_times[last]:.3f} s)",
        )
    return max(i, 0)


def _decode_frames(
    info: VideoInfo, indices: list[int], strategy: str, size: tuple[int, int] | None
) -> tuple[list[np.ndarray], list[float]]:
    wanted = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    container = _open(info.path)
    with container:
        vs = _video_stream(container, info.path)
        # FFmpeg's threads cost more to start than a small picture takes to decode (avdigits'
        # 48 px clips decode twice as fast on one); large pictures keep FFmpeg's choice.
        if info.width * info.height <= SMALL_PICTURE:
            vs.codec_context.thread_count = 1
        tb = vs.time_base
        start_pts = vs.start_time or 0

        def frame_pts(i: int) -> int:
            # Per wanted frame, not for the whole file: an hour of video has 10^5 frames.
            return round(info.frame_times[i] / tb) + start_pts

        decoder = None
        position = None  # index of the next frame the decoder will hand out
        try:
            for idx in wanted:
                key = info.keyframe_indices[bisect.bisect_right(info.keyframe_indices, idx) - 1]
                if _should_seek(strategy, position, idx, key):
                    container.seek(frame_pts(key), stream=vs, backward=True)
                    decoder = container.decode(vs)
                    position = key
                target = frame_pts(idx)
                for frame in decoder:
                    if frame.pts is None or frame.pts < target:
                        continue
                    got[idx] = frame_to_rgb(frame, info.rotation, size)
                    position = idx + 1
                    break
                else:
                    raise MediaError(
                        info.path,
                        "truncated",
                        f"decoding ended before frame {idx} ({info.frame_times[idx]:.3f} s) "
                        f"of {info.frame_count}",
                    )
        except av.FFmpegError as e:
            raise MediaError(info.path, "truncated", f"decoding failed part-way: {e}") from None
    return [got[i] for i in indices], [info.frame_times[i] for i in indices]


def _should_seek(strategy: str, position: int | None, idx: int, key: int) -> bool:
    if position is None or idx < position:
        return True  # nothing decoded yet, or the target lies behind the decoder
    if strategy == "seek":
        return key > position or idx > position
    if strategy == "sequential":
        return False
    # auto: decoding on costs idx - position frames; seeking costs idx - key plus the overhead.
    return (idx - key) + SEEK_COST_FRAMES < idx - position


def _rotation(container: av.container.InputContainer, vs) -> int:
    """Display rotation in degrees counter-clockwise, read from the first frame's matrix.

    PyAV exposes the display matrix on frames only, so decode one (after the probe's scan).
    """
    try:
        container.seek(vs.start_time or 0, stream=vs, backward=True)
        for frame in container.decode(vs):
            angle = frame.rotation or 0
            return round(angle / 90.0) * 90 % 360
    except av.FFmpegError:
        pass
    return 0


def _read_track(path: str, start: float, end: float, rate: int | None, mono: bool):
    container = _open(path)
    with container:
        stream = container.streams.audio[0]
        data, native = decode_audio_stream(container, stream, start, end, path)
    # The track may end a little before the picture: pad it to the window.
    return finish_audio(data, native, rate, mono, end - start, pad=True)


def _open(path: str | Path) -> av.container.InputContainer:
    refuse_other_modality(path, "video")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as e:
        raise unreadable(path, "video", e) from None


def _video_stream(container: av.container.InputContainer, path: str | Path):
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg's still-image demuxers
        raise MediaError(
            path, "wrong-modality", f"expected video, FFmpeg reads it as an image ({fmt})"
        )
    if not container.streams.video:
        kind = "audio only" if container.streams.audio else "no video stream"
        raise MediaError(path, "wrong-modality", f"expected video, found {kind}")
    vs = container.streams.video[0]
    if vs.codec_context is None or not vs.codec_context.width:
        raise MediaError(path, "unreadable", "the video stream's codec or frame size is unknown")
    return vs


__all__ = [
    "SAMPLING_MODES",
    "SEEK_COST_FRAMES",
    "VideoClip",
    "VideoInfo",
    "frame_size",
    "frame_to_rgb",
    "probe_video",
    "read_video",
    "sample_times",
    "sliding_windows",
]
