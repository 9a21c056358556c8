"""Which file extensions belong to which modality, and sniffing a file's real kind.

Extensions decide a manifest column's role; the magic bytes tell a user that a file named
`clip.mp4` is really a text file, which is a far better error than "invalid data".
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

from mmfuse.errors import MediaError

MEDIA = ("image", "audio", "video")
# Tabular modalities: the cell is the value itself (a number, a category), never a file.
TABULAR = ("numeric", "categorical")
MODALITIES = (*MEDIA, "text", *TABULAR)

EXTENSIONS: dict[str, frozenset[str]] = {
    "image": frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}),
    "audio": frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff"}),
    "video": frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}),
    "text": frozenset({".txt"}),
}

# A file larger than this is refused before decoding (override per call); 2 GiB covers long
# videos while stopping a mislabelled disk image from being read into memory.
DEFAULT_MAX_BYTES = 2 * 1024**3


def reads_file(modality: str, column: str, text_files=frozenset()) -> bool:
    """Whether a cell of `column` (read as `modality`) names a file, rather than holding the
    value itself (text typed into the manifest, a number, a category)."""
    return modality in MEDIA or (modality == "text" and column in text_files)


def modality_of_path(value: str) -> str | None:
    """The modality a path's extension names, or None for anything else."""
    suffix = Path(value.strip()).suffix.lower()
    for modality, exts in EXTENSIONS.items():
        if suffix in exts:
            return modality
    return None


# (magic bytes, offset, modalities the container can hold, format name)
_MAGIC: list[tuple[bytes, int, frozenset[str], str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, frozenset({"image"}), "PNG"),
    (b"\xff\xd8\xff", 0, frozenset({"image"}), "JPEG"),
    (b"GIF8", 0, frozenset({"image"}), "GIF"),
    (b"BM", 0, frozenset({"image"}), "BMP"),
    (b"II*\x00", 0, frozenset({"image"}), "TIFF"),
    (b"MM\x00*", 0, frozenset({"image"}), "TIFF"),
    (b"WEBP", 8, frozenset({"image"}), "WebP"),
    (b"WAVE", 8, frozenset({"audio"}), "WAV"),
    (b"fLaC", 0, frozenset({"audio"}), "FLAC"),
    (b"AIFF", 8, frozenset({"audio"}), "AIFF"),
    (b"AIFC", 8, frozenset({"audio"}), "AIFF"),
    (b"ID3", 0, frozenset({"audio"}), "MP3"),
    (b"OggS", 0, frozenset({"audio", "video"}), "Ogg"),
    (b"AVI ", 8, frozenset({"video"}), "AVI"),
    (b"ftyp", 4, frozenset({"audio", "video"}), "MP4/MOV"),
    (b"\x1a\x45\xdf\xa3", 0, frozenset({"audio", "video"}), "Matroska/WebM"),
]
_TEXT = frozenset({"text"})


def sniff(path: str | Path) -> tuple[frozenset[str], str | None]:
    """(modalities the file may hold, format name) from its first bytes; (∅, None) if unknown.

    MP4, Ogg and Matroska hold audio or video, so a container names both.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return frozenset(), None
    for magic, offset, modalities, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return modalities, name
    if head and _looks_like_text(head):
        return _TEXT, "text"
    return frozenset(), None


def _looks_like_text(head: bytes) -> bool:
    # A multi-byte UTF-8 character may be cut at the end of the sample: allow 3 bytes of slack.
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    return bool(text) and all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def check_file(path: str | Path, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Path:
    """Existence, emptiness and size checks shared by every reader."""
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "missing", "no such file; check the path and the manifest's folder")
    if not p.is_file():
        raise MediaError(p, "unreadable", "not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise MediaError(p, "zero-length", "the file is empty")
    if max_bytes is not None and size > max_bytes:
        raise MediaError(
            p, "too-large", f"{size} bytes is over the {max_bytes}-byte limit (max_bytes=)"
        )
    return p


def refuse_other_modality(path: str | Path, expected: str) -> None:
    """Raise before decoding when the bytes clearly belong to another modality.

    FFmpeg opens a JPEG as a one-frame "video" and then fails deep inside decoding; saying
    "this is an image" up front is the error a user can act on.
    """
    error = _wrong_modality(path, expected)
    if error is not None:
        raise error


def unreadable(path: str | Path, expected: str, cause: BaseException | str) -> MediaError:
    """The error for a file the decoder rejected, naming what it really is when we can tell."""
    return _wrong_modality(path, expected) or MediaError(
        path, "unreadable", f"cannot decode as {expected}: {cause}"
    )


def _wrong_modality(path: str | Path, expected: str) -> MediaError | None:
    modalities, fmt = sniff(path)
    if modalities and expected not in modalities:
        return MediaError(path, "wrong-modality", f"expected {expected}, but it looks like {fmt}")
    return None


# What decoders raise on bytes they cannot make sense of, beyond their own error types: a
# malformed header surfaces as any of these from Pillow, libsndfile or FFmpeg's Python bindings.
_DECODER_FAILURES = (
    OSError,
    ValueError,
    EOFError,
    RuntimeError,
    SyntaxError,
    IndexError,
    KeyError,
    struct.error,
)


def media_errors_only(modality: str):
    """Make a reader keep its promise that only `MediaError` escapes.

    The reader's first argument is the path. Decoder failures nobody anticipated become
    "unreadable" with the original exception named, so `validate` can still list the row.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(path, *args, **kwargs):
            try:
                return fn(path, *args, **kwargs)
            except MediaError:
                raise
            except _DECODER_FAILURES as e:
                detail = f"cannot decode as {modality}: {type(e).__name__}: {e}"
                raise MediaError(path, "unreadable", detail) from e

        return wrapper

    return decorate
