"""An on-disk cache of a frozen encoder's per-sample features, so decoding and encoding run once.

When an encoder is frozen its output for a sample never changes, so every later epoch (and every
later run with the same encoder) can read the `D`-long feature from disk instead of decoding the
media and running the network again.

Keys. An entry is found by two hashes:

* the sample's `content_hash`: the sha256 of a media file's bytes, or of a text cell's string.
  Renaming or moving a file keeps its entry; editing it gives a new key.
* the encoder's `encoder_fingerprint`: the sha256 of its config, input spec, every weight and
  anything else passed as `extra`. Another architecture, option, checkpoint or preprocessing
  gives another folder.

Invalidation is therefore never needed: a stale entry is simply never looked up again. Deleting
the cache folder (or one fingerprint's subfolder) is always safe.

Layout::

    root/
        <fingerprint[:32]>/       one folder per encoder
            encoder.json          what the encoder was (for humans; never read back)
            3f/3f9a…c1.npy        one float32 array of shape (D,) per sample, sharded by key[:2]
            3f/.3f9a…c1.1234-….tmp  a write in progress, or left by a killed writer

Crash safety. An entry is written to a temp file in its own folder, flushed and fsynced, then
renamed onto its final name with `os.replace`, which is atomic on POSIX and Windows. So a `.npy`
file is either absent or complete, however the writer dies; concurrent writers of one key each
rename a complete file and the last one wins (they hold the same value). Bit rot or a hand-copied
partial file is caught on read: a damaged entry is deleted and reported as a miss, never raised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mmfuse.encoders import EncoderError

CACHE_FORMAT = 1

_CHUNK = 1 << 20
# Keys and fingerprints become file and folder names: no separators, no leading dot.
_SAFE_NAME = re.compile(r"[0-9A-Za-z_-]+")
_DESCRIPTION_FILE = "encoder.json"


# --------------------------------------------------------------------------- keys


def content_hash(value: str | os.PathLike, *, is_path: bool) -> str:
    """sha256 hex of a file's bytes (`is_path=True`) or of a text cell (`is_path=False`).

    File hashes are memoised per process by path, the file's identity (device, inode), size,
    mtime and ctime, so asking again about an unchanged file does not reread it; any write to
    the file changes its ctime and makes it hashed afresh. (One `stat`, no path resolution: this
    is asked for every sample of every epoch.)
    """
    if not is_path:
        if not isinstance(value, str):
            raise TypeError(
                f"content_hash(is_path=False) hashes a text cell and needs a str, got "
                f"{type(value).__name__} {value!r}; pass is_path=True for a file"
            )
        return hashlib.sha256(b"text:" + value.encode("utf-8")).hexdigest()
    return file_hash(value)


def file_signature(path: str | os.PathLike) -> tuple[int, int, int, int, int]:
    """A file's (device, inode, size, mtime, ctime): what its hash is memoised by. Any write
    to the file changes its ctime."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_hash(path: str | os.PathLike, signature: tuple | None = None) -> str:
    """`content_hash` of a file whose `file_signature` is `signature` (taken now when None)."""
    return _file_sha256(os.fspath(path), *(signature or file_signature(path)))


# The stat fields are part of the cache key only, so that a changed file misses the memo.
@functools.lru_cache(maxsize=1 << 18)
def _file_sha256(path: str, dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_fingerprint(encoder: torch.nn.Module, extra: Mapping | None = None) -> str:
    """sha256 hex naming everything that decides an encoder's output for a given input.

    Hashes `CACHE_FORMAT`, `encoder.config()` (or the class name for an encoder that has no
    registered config), `encoder.input_spec`, `extra` (e.g. the transform's own settings) and the
    name, dtype, shape and bytes of every tensor in `state_dict()`, so the same architecture with
    other weights gets another fingerprint. The result is the same in every process.
    """
    header = {
        "cache_format": CACHE_FORMAT,
        "encoder": _encoder_config(encoder),
        "input_spec": encoder.input_spec.to_dict() if hasattr(encoder, "input_spec") else None,
        "extra": dict(extra) if extra is not None else None,
    }
    try:
        header_json = json.dumps(header, sort_keys=True)
    except TypeError as e:
        raise ValueError(
            f"encoder_fingerprint: extra must be JSON-safe (str, numbers, lists, dicts), got "
            f"{extra!r} ({e}); convert paths and objects to strings first"
        ) from None
    digest = hashlib.sha256(header_json.encode())
    for name, tensor in encoder.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # Viewed as bytes, so dtypes numpy lacks (bfloat16) hash too; dtype+shape fix the length.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _encoder_config(encoder: torch.nn.Module):
    config = getattr(encoder, "config", None)
    if callable(config):
        try:
            return config()
        except EncoderError:
            pass  # made without mmfuse.encoders.build: the weights still tell encoders apart
    cls = type(encoder)
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- the cache


class FeatureCache:
    """Features of one encoder (`fingerprint`) under `root`, one float32 `(D,)` file per key.

    Nothing touches the disk until the first `put`, which also writes `encoder.json` from
    `description` (any JSON-safe mapping, e.g. the encoder's config) for whoever browses `root`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fingerprint: str,
        *,
        description: Mapping | None = None,
    ):
        _check_name(fingerprint, "fingerprint", "pass encoder_fingerprint(encoder)")
        try:
            # Serialised now so that a non-JSON description fails here, not at the first put.
            self._description = json.dumps(
                {
                    "cache_format": CACHE_FORMAT,
                    "fingerprint": fingerprint,
                    "description": dict(description) if description is not None else None,
                },
                indent=2,
                sort_keys=True,
            )
        except TypeError as e:
            raise ValueError(
                f"FeatureCache description must be JSON-safe, got {description!r} ({e}); "
                "pass e.g. encoder.config()"
            ) from None
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.dir = self.root / fingerprint[:32]
        self._described = False

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.dir)!r})"

    def _path(self, key: str) -> Path:
        _check_name(key, "key", "pass content_hash(...) of the sample")
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> torch.Tensor | None:
        """The stored feature as a float32 `(D,)` tensor, or None if absent or damaged."""
        path = self._path(key)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            array = None  # truncated, garbage or a pickle: treated like a wrong shape below
        if not (
            isinstance(array, np.ndarray)
            and array.ndim == 1
            and array.size > 0
            and array.dtype == np.float32
        ):
            # Only something other than `put` writes such a file; drop it so it is recomputed.
            # (A writer replacing it right now loses its entry at worst: one more miss.)
            path.unlink(missing_ok=True)
            return None
        return torch.from_numpy(array)

    def put(self, key: str, feature: torch.Tensor) -> None:
        """Store one sample's `(D,)` feature (as float32), atomically; overwrites an old entry."""
        path = self._path(key)
        if not isinstance(feature, torch.Tensor):
            raise TypeError(
                f"FeatureCache.put({key!r}): feature must be a torch.Tensor, got "
                f"{type(feature).__name__}"
            )
        if feature.ndim != 1 or feature.numel() == 0:
            raise ValueError(
                f"FeatureCache.put({key!r}): feature must be one sample's non-empty 1-D (D,) "
                f"tensor, got shape {tuple(feature.shape)}; store each row of a B×D batch "
                "under its own key"
            )
        array = feature.detach().to("cpu", torch.float32).contiguous().numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self._described:
            description = self.dir / _DESCRIPTION_FILE
            if not description.exists():
                _atomic_write(description, lambda f: f.write(self._description.encode()))
            self._described = True
        _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def __len__(self) -> int:
        """Number of complete entries (temp files of writes in progress are not counted)."""
        return sum(1 for _ in self.dir.glob("*/*.npy"))

    def clear_scratch(self, *, older_than: float = 60.0) -> int:
        """Delete temp files left by killed writers; return how many were deleted.

        Only temp files untouched for `older_than` seconds go, so that a live writer in another
        process (another DDP rank) never loses the file it is about to rename; a write takes
        milliseconds. Pass `older_than=0` when no other process is writing.
        """
        cutoff = time.time() - older_than
        removed = 0
        for tmp in self.dir.glob("*/.*.tmp"):
            try:
                if tmp.stat().st_mtime <= cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass  # renamed into place or cleared by someone else meanwhile
        return removed


def _check_name(value, what: str, fix: str) -> None:
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"FeatureCache {what} must be a non-empty str of letters, digits, '_' or '-' (it "
            f"names a file), got {value!r}; {fix}"
        )


def _atomic_write(path: Path, write) -> None:
    # Same folder as the target, so os.replace is a rename within one file system; pid plus a
    # random part keep concurrent writers (processes or threads) off each other's temp file.
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # No fsync of the folder: after a power cut the entry may be missing, which is a miss.
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
