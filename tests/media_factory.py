"""Build the test media: every image, audio and video file a test reads is made here, in a folder
the test gives (no media is committed). Each builder returns the path it wrote.

Video frames carry their own index so a test can tell which frame a reader returned: the top half
is a row of `INDEX_BITS` vertical stripes, white for a 1 bit (most significant on the left), and
the bottom half is red on the left and green on the right so orientation is visible too.
`frame_index(frame)` reads the number back; it survives compression and resizing.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mmfuse.data.writers import write_audio, write_video

INDEX_BITS = 10  # frame numbers up to 1023
SMALL = (64, 48)  # width, height of most test videos
FPS = 25
TONE_HZ = 440.0

# ---------------------------------------------------------------------------------------------
# Images


def pattern(width: int = 48, height: int = 32) -> np.ndarray:
    """An upright H×W×3 uint8 test picture with no symmetry: a red block in the top-left
    corner, a blue block in the bottom-right, a horizontal green ramp everywhere else."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[: height // 3, : width // 3] = (255, 0, 0)
    img[-height // 4 :, -width // 4 :] = (0, 0, 255)
    return img


# Which Pillow modes each format stores, as used by `image_file`.
IMAGE_MODES = {
    "png": ("L", "LA", "P", "RGB", "RGBA", "I;16"),
    "jpeg": ("L", "RGB", "CMYK"),
    "webp": ("RGB", "RGBA"),
    "bmp": ("L", "P", "RGB"),
    "tiff": ("L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK"),
    "gif": ("P",),  # Pillow writes "L" to GIF as a grey palette: it reads back as "P"
}
SUFFIX = {
    "png": ".png",
    "jpeg": ".jpg",
    "webp": ".webp",
    "bmp": ".bmp",
    "tiff": ".tif",
    "gif": ".gif",
}


def pil_image(mode: str = "RGB", size: tuple[int, int] = (48, 32)) -> Image.Image:
    """`pattern` as a Pillow image in `mode`. "P" has a transparent palette entry (the red
    block), "LA"/"RGBA" an alpha ramp, "I;16" a 16-bit ramp using the full 0–65535 range."""
    rgb = Image.fromarray(pattern(*size))
    if mode == "I;16":
        ramp = np.linspace(0, 65535, size[0] * size[1]).reshape(size[1], size[0])
        return Image.fromarray(ramp.astype(np.uint16))  # Pillow names uint16 arrays "I;16"
    if mode == "P":
        img = rgb.quantize(colors=16)
        img.info["transparency"] = img.getpixel((0, 0))  # the red block's palette index
        return img
    if mode in ("LA", "RGBA"):
        alpha = Image.fromarray(
            np.linspace(0, 255, size[0], dtype=np.uint8)[None, :].repeat(size[1], 0)
        )
        img = rgb.convert(mode[:-1])
        img.putalpha(alpha)
        return img
    return rgb.convert(mode)


def image_file(
    folder: Path,
    mode: str = "RGB",
    fmt: str = "png",
    size: tuple[int, int] = (48, 32),
    name: str | None = None,
) -> Path:
    if mode not in IMAGE_MODES[fmt]:
        raise ValueError(f"{fmt} cannot store mode {mode!r}; choose one of {IMAGE_MODES[fmt]}")
    img = pil_image(mode, size)
    path = Path(folder) / (name or f"{fmt}_{mode.replace(';', '')}{SUFFIX[fmt]}")
    extra = {}
    if "transparency" in img.info:
        extra["transparency"] = img.info["transparency"]
    if fmt in ("jpeg", "webp"):
        extra["quality"] = 95
    img.save(path, format=fmt.upper(), **extra)
    return path


def exif_rotated_jpeg(folder: Path, name: str = "exif_orientation6.jpg") -> Path:
    """A JPEG whose pixels are stored turned 90° counter-clockwise with EXIF Orientation 6
    ("rotate 90° clockwise to display"): applying the tag gives `pattern(48, 32)` back."""
    stored = Image.fromarray(np.rot90(pattern(48, 32), k=1).copy())  # 32 wide, 48 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = Path(folder) / name
    stored.save(path, format="JPEG", quality=95, exif=exif)
    return path


def huge_header_png(folder: Path, size: int = 100_000, name: str = "huge_header.png") -> Path:
    """A PNG whose header claims size×size RGB pixels but holds no image data.

    Reading the size must not allocate: note Pillow's `Image.open` raises
    `DecompressionBombError` for it (more than 2×`Image.MAX_IMAGE_PIXELS` pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
    path = Path(folder) / name
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------
# Audio


def tone(
    seconds: float = 1.0,
    rate: int = 16000,
    channels: int = 1,
    freq: float = TONE_HZ,
    amplitude: float = 0.5,
) -> np.ndarray:
    """A sine, N (mono) or N×C float32; channel c is at amplitude / (c + 1)."""
    t = np.arange(round(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return wave.astype(np.float32)
    return np.stack([wave / (c + 1) for c in range(channels)], axis=1).astype(np.float32)


def audio_file(
    folder: Path,
    fmt: str = "wav",
    rate: int = 16000,
    channels: int = 1,
    seconds: float = 1.0,
    subtype: str | None = None,
    amplitude: float = 0.5,
    name: str | None = None,
) -> Path:
    name = name or f"tone_{rate}_{channels}ch{'_' + subtype if subtype else ''}.{fmt}"
    samples = tone(seconds, rate, channels, amplitude=amplitude)
    return write_audio(Path(folder) / name, samples, rate, subtype=subtype)


def speech_wav(folder: Path, text: str = "seven", name: str = "speech.wav") -> Path:
    """espeak-ng saying `text` (22050 Hz mono int16). Tests skip when espeak-ng is missing."""
    path = Path(folder) / name
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


# ---------------------------------------------------------------------------------------------
# Video


def index_frame(index: int, width: int = SMALL[0], height: int = SMALL[1]) -> np.ndarray:
    """An H×W×3 frame showing `index` (see the module docstring)."""
    frame = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, INDEX_BITS + 1).round().astype(int)
    for bit in range(INDEX_BITS):
        if index >> (INDEX_BITS - 1 - bit) & 1:
            frame[: height // 2, edges[bit] : edges[bit + 1]] = 255
    frame[height // 2 :, : width // 2] = (255, 0, 0)
    frame[height // 2 :, width // 2 :] = (0, 255, 0)
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Read back the index drawn by `index_frame` from an H×W×3 (or 3×H×W) RGB frame."""
    frame = np.asarray(frame)
    if frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = frame.transpose(1, 2, 0)
    height, width = frame.shape[:2]
    top = frame[height // 8 : height * 3 // 8].astype(np.float32).mean(axis=(0, 2))  # W
    edges = np.linspace(0, width, INDEX_BITS + 1)
    index = 0
    for bit in range(INDEX_BITS):
        centre = int((edges[bit] + edges[bit + 1]) / 2)
        index = index * 2 + int(top[centre] > 128)
    return index


def index_frames(count: int, width: int = SMALL[0], height: int = SMALL[1]):
    """Frames 0..count-1 as a generator, so long videos never sit in memory."""
    return (index_frame(i, width, height) for i in range(count))


def video_file(
    folder: Path,
    name: str,
    frames: int = 40,
    size: tuple[int, int] = SMALL,
    codec: str = "libx264",
    audio: bool = False,
    audio_rate: int = 16000,
    **kwargs,
) -> Path:
    """`frames` index frames at `FPS` (plus a 440 Hz tone as long as the video when `audio`).
    Further keyword arguments go to `write_video` (keyframe_interval, timestamps, ...)."""
    samples = tone(frames / FPS, audio_rate) if audio else None
    return write_video(
        Path(folder) / name,
        index_frames(frames, *size),
        fps=FPS,
        codec=codec,
        audio=samples,
        audio_rate=audio_rate,
        **kwargs,
    )


def vfr_timestamps(frames: int = 40) -> list[float]:
    """Alternating 40 ms and 80 ms gaps: clearly not a constant rate."""
    gaps = [0.04 if i % 2 == 0 else 0.08 for i in range(frames - 1)]
    return [0.0, *np.cumsum(gaps).round(3).tolist()]


def rotated_video_cli(
    folder: Path, source: Path, degrees: int = 90, name: str | None = None
) -> Path:
    """Copy `source` with a rotation tag set by the ffmpeg CLI, as phone footage arrives.
    With Debian's ffmpeg 5.1, rotate=90 reads back in PyAV 18 as `frame.rotation == 90`."""
    path = Path(folder) / (name or f"rotated{degrees}_cli.mp4")
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-c", "copy"]
    subprocess.run([*cmd, "-metadata:s:v:0", f"rotate={degrees}", str(path)], check=True)
    return path


def truncated_mp4(
    folder: Path,
    frames: int = 300,
    keep: float = 0.3,
    at_packet_boundary: bool = False,
    name: str | None = None,
) -> Path:
    """A faststart mp4 of `frames` frames cut after `keep` of its frame data: the header (at
    the front) still promises every frame. Cut mid-packet (the default, like an interrupted
    download), PyAV's demuxer flags the last packet `is_corrupt` and `container.decode()`
    raises `InvalidDataError` after the whole frames; cut at a packet boundary it just stops
    early, without an exception."""
    full = video_file(folder, f"untruncated_{frames}.mp4", frames=frames, faststart=True)
    data = full.read_bytes()
    with av.open(str(full)) as container:
        packets = [(p.pos, p.pos + p.size, p.pts) for p in container.demux(video=0) if p.size]
    # the index frames compress to a few bytes, so the moov index is much of the file:
    # cut within the frame data, not at a fraction of the file size
    start, end = packets[0][0], packets[-1][1]
    cut = start + int((end - start) * keep)
    if at_packet_boundary:
        # packets come in decode order (a P frame before the B frames shown ahead of it);
        # cut where the kept packets are exactly the first k frames, so frames 0..k-1 decode
        in_order = sorted(pts for _, _, pts in packets)
        clean, latest = [], -1
        for kept, (_, stop, pts) in enumerate(packets, start=1):
            latest = max(latest, pts)
            if latest == in_order[kept - 1]:  # no gap below the latest frame kept
                clean.append(stop)
        cut = max(stop for stop in clean if stop <= cut)
    else:
        cut = next(pos + 1 for pos, stop, _ in packets if stop > cut)  # 1 byte into a packet
    path = Path(folder) / (name or f"truncated{'_clean' if at_packet_boundary else ''}.mp4")
    path.write_bytes(data[:cut])
    full.unlink()
    return path


# ---------------------------------------------------------------------------------------------
# The corpus


def make_corpus(folder: Path) -> dict[str, Path]:
    """Build every case in `folder` (~1–2 s); keys name the case. "speech" and
    "video_rotated_cli" are present only when espeak-ng / ffmpeg are installed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    media: dict[str, Path] = {}

    # images: every mode each format stores, plus the awkward ones
    for fmt, modes in IMAGE_MODES.items():
        for mode in modes:
            media[f"{fmt}_{mode.replace(';', '').lower()}"] = image_file(folder, mode, fmt)
    media["jpeg_exif_rotated"] = exif_rotated_jpeg(folder)
    media["tiny_4x4"] = image_file(folder, "RGB", "png", size=(4, 4), name="tiny_4x4.png")

    # audio
    media["wav_int16_mono"] = audio_file(folder, "wav", 16000, 1)
    media["wav_float_stereo"] = audio_file(folder, "wav", 16000, 2, subtype="FLOAT")
    for rate in (8000, 44100, 48000):
        media[f"wav_{rate // 1000}k"] = audio_file(folder, "wav", rate, 1)
    for fmt in ("flac", "ogg", "mp3", "opus", "m4a", "aac"):
        media[fmt] = audio_file(folder, fmt, 16000, 1)
    media["mp3_stereo_44k"] = audio_file(folder, "mp3", 44100, 2)
    media["wav_near_silent"] = audio_file(
        folder, "wav", 16000, 1, amplitude=1e-4, name="near_silent.wav"
    )
    media["wav_20ms"] = audio_file(folder, "wav", 16000, 1, seconds=0.02, name="short_20ms.wav")
    if shutil.which("espeak-ng"):
        media["speech"] = speech_wav(folder)

    # videos: 40 frames (1.6 s) of 64×48 unless the case needs otherwise
    media["h264_mp4"] = video_file(folder, "h264.mp4")
    media["h264_audio_mp4"] = video_file(folder, "h264_audio.mp4", audio=True)
    media["h264_audio_mkv"] = video_file(folder, "h264_audio.mkv", audio=True)
    media["vp9_webm"] = video_file(folder, "vp9.webm", codec="libvpx-vp9")
    media["vp9_audio_webm"] = video_file(folder, "vp9_audio.webm", codec="libvpx-vp9", audio=True)
    media["mpeg4_avi"] = video_file(folder, "mpeg4.avi", codec="mpeg4")
    media["mpeg4_audio_avi"] = video_file(folder, "mpeg4_audio.avi", codec="mpeg4", audio=True)
    media["mpeg4_mp4"] = video_file(folder, "mpeg4.mp4", codec="mpeg4")
    media["odd_size"] = video_file(folder, "odd_321x239.mp4", frames=10, size=(321, 239))
    media["vfr"] = video_file(folder, "vfr.mp4", timestamps=vfr_timestamps(40))
    media["keyint_30"] = video_file(folder, "keyint30.mp4", frames=90, keyframe_interval=30)
    media["keyint_250"] = video_file(folder, "keyint250.mp4", frames=300, keyframe_interval=250)
    media["rotated_90"] = video_file(folder, "rotated90.mp4", frames=10, rotation=90)
    if shutil.which("ffmpeg"):
        media["rotated_90_cli"] = rotated_video_cli(folder, media["h264_mp4"])
    media["truncated_mp4"] = truncated_mp4(folder)
    media["truncated_clean_mp4"] = truncated_mp4(folder, at_packet_boundary=True)

    # bad files
    media["empty_wav"] = _write(folder / "empty.wav", b"")
    media["random_jpg"] = _write(folder / "random.jpg", np.random.default_rng(0).bytes(2048))
    media["text_mp4"] = _write(folder / "text.mp4", b"this is not a video\n" * 10)
    media["png_named_jpg"] = image_file(folder, "RGB", "png", name="png_named.jpg")
    media["huge_header_png"] = huge_header_png(folder)
    return media


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# Hostile files: small on disk, huge (or poisonous) once decoded. Each is written without
# holding its decoded size in the test process.


def _png(path: Path, width: int, height: int, channels: int = 3) -> Path:
    """A valid all-black 8-bit PNG, its zero rows compressed a band at a time."""
    colour = {1: 0, 3: 2}[channels]
    deflate = zlib.compressobj(9)
    row = b"\x00" * (1 + width * channels)  # filter byte 0, then black pixels
    band = max(1, (1 << 22) // len(row))
    parts = []
    for top in range(0, height, band):
        parts.append(deflate.compress(row * min(band, height - top)))
    parts.append(deflate.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def tall_png(folder: Path, name: str = "tall_1x65535.png") -> Path:
    """1×65535 pixels: a few hundred bytes whose shorter side, resized to 256, is 16.8 Mpx."""
    return _png(Path(folder) / name, 1, 65535)


def big_png(folder: Path, side: int = 9400, name: str | None = None) -> Path:
    """side×side black RGB: about 0.3 MB on disk for 9400 (88 Mpx, 265 MB as RGB)."""
    return _png(Path(folder) / (name or f"big_{side}.png"), side, side)


def long_silent_flac(
    folder: Path, seconds: float = 1200.0, rate: int = 8000, name: str = "long_silent.flac"
) -> Path:
    """Digital silence for `seconds`, written a block at a time: FLAC stores it in a few KB a
    minute, so hours of decoded audio fit in a small file."""
    import soundfile as sf

    path = Path(folder) / name
    block = np.zeros(rate * 60, np.int16)
    with sf.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        left = round(seconds * rate)
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
    return path


def huge_mjpeg(folder: Path, side: int = 8000, name: str = "huge_mjpeg.avi") -> Path:
    """One side×side grey MJPEG frame in AVI, made by the ffmpeg CLI (in its own process):
    about 0.4 MB on disk for 8000, 64 Mpx a frame decoded."""
    path = Path(folder) / name
    source = f"color=c=gray:s={side}x{side}:d=0.04:r=25"
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-frames:v", "1"]
    subprocess.run([*cmd, "-c:v", "mjpeg", "-q:v", "31", str(path)], check=True)
    return path


def poisoned_wav(folder: Path, value: float = float("nan"), name: str | None = None) -> Path:
    """A float WAV tone with `value` (NaN, inf, 1e30, ...) in a few samples."""
    import soundfile as sf

    samples = tone(1.0)
    samples[100:110] = value
    path = Path(folder) / (name or f"poisoned_{value}.wav")
    sf.write(str(path), samples, 16000, subtype="FLOAT")  # write_audio would clip it
    return path


def poisoned_float_tiff(folder: Path, value: float = float("nan"), name: str | None = None):
    """A 32-bit float greyscale TIFF (Pillow mode "F") with `value` in one corner."""
    arr = np.linspace(0, 1, 48 * 32, dtype=np.float32).reshape(32, 48)
    arr[:4, :4] = value
    path = Path(folder) / (name or f"poisoned_{value}.tif")
    Image.fromarray(arr, mode="F").save(path)
    return path


def truncated_audio(folder: Path, fmt: str = "wav", keep: float = 0.3, seconds: float = 1.5):
    """A `seconds` tone in `fmt` (wav, flac, aiff), cut to `keep` of its bytes: the header
    still promises every sample."""
    import soundfile as sf

    full = Path(folder) / f"whole_{fmt}.{fmt}"
    kind = {"wav": "WAV", "flac": "FLAC", "aiff": "AIFF"}[fmt]
    sf.write(str(full), tone(seconds), 16000, format=kind, subtype="PCM_16")
    data = full.read_bytes()
    full.unlink()
    return _write(Path(folder) / f"truncated.{fmt}", data[: int(len(data) * keep)])


def poisoned_video(folder: Path, name: str = "poisoned_track.mkv") -> Path:
    """`video_file`'s 40 frames with a float PCM audio track holding NaN samples (ffmpeg CLI)."""
    folder = Path(folder)
    picture = video_file(folder, "picture_for_poisoned_track.mp4")
    sound = poisoned_wav(folder, float("nan"), name="nan_for_track.wav")
    path = folder / name
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(picture), "-i", str(sound)]
    cmd += ["-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "pcm_f32le", "-shortest"]
    subprocess.run([*cmd, str(path)], check=True)
    return path
