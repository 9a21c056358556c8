"""Decode once: every training file's decoded arrays on disk, so epochs 2+ read, not decode.

What is stored is `SampleLoader.decode`'s output: the uint8 image (scaled down to the side the
transform resizes to) or frames (scaled to it) and the float32 waveform, before any random
choice. The random crops, frames, flips, jitter, noise and SpecAugment of each epoch are drawn
afterwards from the sample's own draws, exactly as without the store, so a fit gives the same
weights with the store and without it. What a process reads it also keeps in memory, under a
budget, and hands out again: nothing downstream writes into it.

Keys, as in the feature cache: one folder per decoding (the input's modality, its encoder's
input spec and whether the pools for augmentation are decoded), one `.npy` file per file content
hash in it. An entry is written by whichever process first decodes the file (a loader worker,
usually, during epoch 1) to a temporary name and renamed into place, so a reader sees a complete
file or none; later reads map the file (`np.load(mmap_mode="r")`) instead of decoding.

Layout::

    <cache>/decoded/<fingerprint[:32]>/decoding.json   what was decoded (for humans)
    <cache>/decoded/<fingerprint[:32]>/3/3f9a…c1.npy   one array per file

Deleting the folder is always safe: entries are decoded again when next needed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from mmfuse.data.cache import default_cache_dir
from mmfuse.features.sample import AUDIO_POOL, VIDEO_POOL
from mmfuse.infer.dataset import MultimodalDataset
from mmfuse.train.config import TrainConfig
from mmfuse.train.feature_cache import file_hash, file_signature

# 2: 16 folders by the key's first digit (was 256, by two); 3: small clips scaled up at decode.
STORE_FORMAT = 3
DECODED_MODALITIES = ("image", "audio", "video")
# The store leaves at least this much of its disk free.
FREE_MARGIN = 1024**3
# Entries a process has read are also kept in its memory, up to this many bytes for all the
# stores of a fit and all its loader processes together: a read from the file system costs
# about as much as staging a picture, so later epochs of a dataset this size skip it.
MEMORY_BYTES = 1024**3


class DecodedStore:
    """Decoded arrays of one input's files under `root/<fingerprint[:32]>`, keyed by content."""

    def __init__(
        self, root: str | os.PathLike, fingerprint: str, description: dict, memory_bytes: int = 0
    ):
        self.dir = Path(root) / fingerprint[:32]
        self.memory_bytes = memory_bytes  # how much of what it reads this process keeps
        self._memory: dict[str, torch.Tensor] = {}
        # File → (its stat signature, key) for what `_memory` holds: `held` finds it by one stat.
        self._files: dict[str, tuple[tuple, str]] = {}
        self._held = 0
        self._prefix = f"{self.dir}{os.sep}"
        self.description = description
        # Folders this process made or found: a mkdir of an existing folder costs a system call
        # (half a millisecond on some file systems) per entry written otherwise.
        self._made: set[Path] = set()

    def __repr__(self) -> str:
        return f"DecodedStore({str(self.dir)!r})"

    def __getstate__(self) -> dict:
        # A worker process starts with an empty memory of its own, not a pickled copy.
        return {**self.__dict__, "_memory": {}, "_files": {}, "_held": 0}

    def held(self, value) -> torch.Tensor | None:
        """What `fetch(value, ...)` would return, if this process holds it in memory and the file
        is unchanged since; else None. One `stat`, no read, so it runs outside the decode time
        limit: a FIFO blocks a read, not a stat (a stat of a known path on a hung mount could
        still block, as the one `fetch` makes would)."""
        entry = self._files.get(value)
        if entry is None:
            return None
        try:
            current = file_signature(value)
        except OSError:
            return None
        return self._memory.get(entry[1]) if current == entry[0] else None

    def fetch(self, value, decode: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The stored array of file `value`, or `decode()`'s result, stored first. The same
        tensor may be returned again: callers must not write into it."""
        # Before the hash: a file written over while it is read and decoded must not be
        # remembered as the new file under the old content's key.
        signature = file_signature(value)
        key = file_hash(value, signature)
        held = self._memory.get(key)
        if held is not None:
            return held
        # A string, not a Path: this runs for every sample of every epoch, and pathlib's joins
        # cost more than the read. 16 folders: each new one costs a mkdir.
        path = f"{self._prefix}{key[0]}{os.sep}{key}.npy"
        try:
            return self._keep(value, signature, key, torch.from_numpy(read_entry(path)))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, EOFError):
            Path(path).unlink(missing_ok=True)  # damaged (a copy cut short): decode it again
        raw = decode()
        if isinstance(raw, torch.Tensor):
            self._put(Path(path), raw.numpy())
            self._keep(value, signature, key, raw)
        return raw

    def _keep(self, value, signature: tuple, key: str, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.untyped_storage().nbytes()
        if self._held + size <= self.memory_bytes:
            self._memory[key] = tensor
            self._held += size
            self._files[value] = (signature, key)
        return tensor

    def _put(self, path: Path, array: np.ndarray) -> None:
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            about = self.dir / "decoding.json"
            if not about.exists():
                write_atomic(about, lambda f: f.write(json.dumps(self.description).encode()))
            self._made.add(path.parent)
        try:
            write_atomic(path, lambda f: np.save(f, array, allow_pickle=False))
        except FileNotFoundError:  # the folder was deleted meanwhile ("always safe")
            self._made.discard(path.parent)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.npy"))


def read_entry(path: str | os.PathLike) -> np.ndarray:
    """A stored `.npy` array, read whole into memory (writable, as `torch.from_numpy` wants it).
    Faster than `np.load` for the store's many small files: one read, no mapping, and
    the header of each shape parsed once (entries of one store share a few)."""
    with open(path, "rb") as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        got = f.readinto(buf)
    if got != len(buf) or buf[:6] != b"\x93NUMPY":
        raise ValueError(f"{path} is not a complete .npy file")
    wide = buf[6] >= 2  # format 2.0+: a 4-byte header length
    start = 12 if wide else 10
    end = start + int.from_bytes(buf[8:start], "little")
    dtype, shape, fortran = _header(bytes(buf[:end]))
    count = math.prod(shape)
    if len(buf) - end != count * dtype.itemsize:
        raise ValueError(f"{path} is cut short")
    array = np.frombuffer(buf, dtype=dtype, count=count, offset=end)
    return array.reshape(shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=256)
def _header(head: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    stream = io.BytesIO(head)
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0
    if version != (1, 0):
        read = np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream)
    if dtype.hasobject:
        raise ValueError("the decoded-sample store holds no object arrays")
    return dtype, shape, fortran


def write_atomic(path: Path, write) -> None:
    """`write(f)` into a temporary file beside `path`, renamed onto it whole: a reader sees
    the old file or the complete new one."""
    # No fsync: after a power cut an entry may be cut short, which `fetch` treats as missing.
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def store_for(root: Path, dataset: MultimodalDataset, name: str) -> DecodedStore:
    """The store of input `name` as `dataset` decodes it."""
    spec = dataset.specs[name]
    description = {
        "store_format": STORE_FORMAT,
        "modality": dataset.inputs[name].modality,
        "input_spec": spec.to_dict(),
        "augment_pools": [VIDEO_POOL, AUDIO_POOL] if dataset.augment else None,
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return DecodedStore(root, digest, description)


def bytes_per_sample(dataset: MultimodalDataset, name: str) -> float:
    """About how many bytes one decoded file of input `name` takes (wide 16:9 pictures)."""
    spec, modality = dataset.specs[name], dataset.inputs[name].modality
    if modality == "audio":
        pool = AUDIO_POOL if dataset.augment else 1.0
        return 4 * spec.sample_rate * spec.duration * pool
    side = spec.resize or round(spec.size * 8 / 7)
    picture = 3 * side * side * 16 / 9
    if modality == "image":
        return picture
    return picture * spec.frames * (VIDEO_POOL if dataset.augment else 1)


def attach_decoded_stores(
    datasets: Iterable[MultimodalDataset | None],
    config: TrainConfig,
    log: Callable[[str], None],
    processes: int = 1,
) -> None:
    """Give each dataset a store per image, audio and video input it decodes (not those served
    from the feature cache), unless the stores would not fit on disk or under the limit. The
    `processes` that will read them share `MEMORY_BYTES` of memory out between them."""
    root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    root = root / "decoded"
    stores = []
    for dataset in datasets:
        if dataset is None:
            continue
        dataset.decoded = {}
        if not config.decoded_cache:
            continue
        for name in dataset.names:
            spec = dataset.inputs[name]
            if spec.modality not in DECODED_MODALITIES or name in dataset.features:
                continue
            store = store_for(root, dataset, name)
            if _fits(dataset, name, store, config, log):
                dataset.decoded[name] = store
                stores.append(store)
    for store in stores:
        store.memory_bytes = MEMORY_BYTES // (len(stores) * max(1, processes))


def _fits(dataset, name: str, store: DecodedStore, config: TrainConfig, log) -> bool:
    column = dataset.inputs[name].column
    rows = int(dataset.manifest.frame[column].notna().sum())
    need = rows * bytes_per_sample(dataset, name)
    store.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.dir).free - FREE_MARGIN
    limit = config.decoded_cache_max_gb * 1024**3
    if need <= min(free, limit):
        return True
    over = (
        "the free space"
        if free < limit
        else f"decoded_cache_max_gb={config.decoded_cache_max_gb:g}"
    )
    log(
        f"decoded-sample cache off for column {column!r}: its {rows} files would take about "
        f"{_size(need)} in {store.dir}, over {over}, so every epoch decodes them "
        "again; free disk space, set cache_dir to a larger disk or raise decoded_cache_max_gb"
    )
    return False


def _size(n: float) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.1f} MB"
