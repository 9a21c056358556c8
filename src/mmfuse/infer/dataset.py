"""Manifest rows → preprocessed tensors, a batch of rows at a time, in DataLoader workers.

A sample that cannot be loaded (missing, truncated or undecodable file, a decode that hangs past
`decode_timeout`) comes back as a `Skipped` record instead of raising: a plain DataLoader ends
the epoch on the first exception, which would let one bad file out of a million stop a run.
The trainer counts the records and reports them (path, stage, reason) at the end.

Every random choice for a sample (crop, flip, frame times, SpecAugment masks, corruption noise)
depends on `(seed, epoch, row)` alone: image and video draws come from that row's stream of a
`RowStreams` (so a batch's are drawn at once), the others from a generator seeded by them. So a
sample's augmentation does not depend on its batch, on which worker loads it, on the number of
workers, or on whether the run was resumed; that is what lets a resumed run reproduce an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch

from mmfuse.data.manifest import Manifest
from mmfuse.errors import ManifestError, MediaError
from mmfuse.features.batched import FrontEnd
from mmfuse.features.draws import RowStreams
from mmfuse.features.sample import STAGED, SampleLoader
from mmfuse.model.config import IGNORE_INDEX, InputConfig


@dataclass
class Skipped:
    """A sample left out, and why: enough to find the file and fix it."""

    row: int
    column: str | None
    path: str | None
    stage: str  # "decode", "timeout", "preprocess", "no-input"
    reason: str  # MediaError reason ("truncated", "unreadable", ...) or the exception type
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column!r}" if self.column else "")
        path = f" ({self.path})" if self.path else ""
        return f"{where}{path}: {self.stage} failed: {self.reason}: {self.message}"


class DecodeTimeout(Exception):
    pass


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """A well-mixed 63-bit seed for one sample in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, row]).generate_state(2, np.uint64)[0] >> 1)


@contextmanager
def time_limit(seconds: float | None):
    """Raise DecodeTimeout in this thread after `seconds`, via SIGALRM.

    Signals reach only the main thread, which is where DataLoader workers (processes) and a
    workers=0 loader run; elsewhere (a server thread) the decode is not bounded here.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise DecodeTimeout(f"decoding took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class MultimodalDataset(torch.utils.data.Dataset):
    """Rows of a manifest as samples for a model's inputs and tasks.

    Index with a row number, or with `(epoch, row)` so the sample's random draws are those of
    that epoch. An item is a dict `{"row", "inputs": {name: tensor | str}, "present": {name:
    bool}, "labels": {task: class index or -100}}`, or a `Skipped` record.

    `specs[name]` is the encoder's `input_spec`; `train` turns augmentation on. `corruptions`
    maps an input name to `(corruption, level)` applied to the raw media (robustness curves).
    `features[name]` (N×D, from the feature cache) replaces loading that input; rows listed in
    `feature_errors[name]` failed when the cache was filled and are skipped. `decoded[name]`
    (a decoded-sample store: `fetch(value, decode)` returns the stored array or stores what
    `decode()` returns) keeps that input's decoded files, so later epochs skip decoding. With
    `profile` set, each item also carries `"timing"`: seconds spent reading and preprocessing.
    `item(key, staged=True)` (what `StagedView` serves) stops image, audio and video inputs at
    `SampleLoader.stage` (uint8 pixels, cut waveforms, the random draws still to apply), for
    whoever takes the batches to finish them with `frontend()` on the device.
    """

    def __init__(
        self,
        manifest: Manifest,
        inputs: Mapping[str, InputConfig],
        specs: Mapping[str, object],
        tasks: Mapping[str, Sequence[str]],
        *,
        train: bool = False,
        augment: bool = True,
        spec_augment: bool = True,
        seed: int = 0,
        decode_timeout: float | None = None,
        corruptions: Mapping[str, tuple] | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
        feature_errors: Mapping[str, Mapping[int, Skipped]] | None = None,
    ):
        self.manifest = manifest
        self.inputs = dict(inputs)
        self.names = sorted(self.inputs)
        self.specs = dict(specs)
        self.tasks = {t: list(c) for t, c in tasks.items()}
        self.train = train
        self.augment = train and augment
        self.spec_augment = spec_augment
        self.seed = seed
        self.decode_timeout = decode_timeout
        self.corruptions = dict(corruptions or {})
        self.features = dict(features or {})
        self.feature_errors = {k: dict(v) for k, v in (feature_errors or {}).items()}
        self.decoded: dict[str, object] = {}
        self.profile = False
        self._timing: dict | None = None
        missing = [c.column for c in self.inputs.values() if c.column not in manifest.frame]
        if missing:
            raise ManifestError(
                f"{manifest.source}: the model reads column(s) {missing}, which the manifest "
                f"lacks; its columns are {list(manifest.frame.columns)}"
            )
        self.labels = {t: self._label_indices(t, classes) for t, classes in self.tasks.items()}
        self.cells = {n: manifest.column_values(c.column) for n, c in self.inputs.items()}
        self.loader = SampleLoader(
            {n: c.modality for n, c in self.inputs.items()},
            self.specs,
            augment=self.augment,
            spec_augment=spec_augment,
            corruptions=corruptions,
            text_files=[n for n, c in self.inputs.items() if c.column in manifest.text_files],
        )
        self.transforms = self.loader.transforms
        self.placeholders = {n: self.placeholder(n) for n in self.names}

    def __len__(self) -> int:
        return len(self.manifest)

    def _label_indices(self, task: str, classes: list[str]) -> np.ndarray:
        """Class index per row, IGNORE_INDEX where the label is missing (multi-task data)."""
        index = {c: i for i, c in enumerate(classes)}
        out = np.full(len(self.manifest), IGNORE_INDEX, dtype=np.int64)
        if task not in self.manifest.frame:
            return out  # an unlabelled manifest (prediction) has no label column at all
        for row in range(len(self.manifest)):
            value = self.manifest.value(row, task)
            if value is None:
                continue
            key = _label_text(value)
            if key not in index:
                raise ManifestError(
                    f"{self.manifest.source}: row {row}, column {task!r}: label {key!r} is not "
                    f"one of the model's classes {classes}; drop the row or retrain with it"
                )
            out[row] = index[key]
        return out

    def placeholder(self, name: str):
        """What an absent input looks like in a batch: zeros of the loaded shape (or "")."""
        if name in self.features:
            return torch.zeros(self.features[name].shape[1])
        return self.loader.placeholders[name]

    def frontend(self) -> FrontEnd:
        """What finishes this dataset's staged items (`item(..., staged=True)`) batch by batch."""
        return self.loader.frontend()

    def _absent(self, name: str, staged: bool):
        if staged and name not in self.features and self.inputs[name].modality in STAGED:
            return self.loader.staged_placeholder(name)
        return self.placeholders[name]

    def __getitem__(self, key):
        return self.item(key)

    def __getitems__(self, keys) -> list:
        return self.items(keys)

    def item(self, key, staged: bool = False):
        """The sample of `key` (a row, or `(epoch, row)`); `staged`: see the class."""
        return self.items([key], staged)[0]

    def items(self, keys, staged: bool = False) -> list:
        """The samples of `keys`, as `item` of each gives them. Image and video inputs are
        decoded per row, then cropped and resized for all rows at once (`SampleLoader
        .stage_rows`), each row's random draws from a stream of its own (`RowStreams`, keyed by
        the seed, input, epoch and row), so a sample is the same in any batch."""
        keys = [key if isinstance(key, tuple) else (0, key) for key in keys]
        together = [n for n in self.names if self._staged_together(n)]
        out = [self._row_item(int(epoch), int(row), together, staged) for epoch, row in keys]
        for name in together:
            self._stage_rows(name, out, staged)
        return out

    def _staged_together(self, name: str) -> bool:
        modality = self.inputs[name].modality
        together = modality in ("image", "video") and name not in self.features
        return together and name not in self.corruptions

    def _row_item(self, epoch: int, row: int, together: list[str], staged: bool):
        """One row's item; inputs in `together` hold their decoded value (`stage_rows` next)."""
        generator = None
        item = {"row": row, "epoch": epoch, "inputs": {}, "present": {}, "labels": {}}
        # `fetch` and `load` add to it: one row at a time per process, workers included.
        self._timing = timing = {"read": 0.0, "preprocess": 0.0} if self.profile else None
        for name in self.names:
            column, value = self.inputs[name].column, self.cells[name][row]
            if value is None:
                item["inputs"][name], item["present"][name] = self._absent(name, staged), False
                continue
            if name in self.features:
                failed = self.feature_errors.get(name, {}).get(row)
                if failed is not None:
                    return failed
                item["inputs"][name], item["present"][name] = self.features[name][row], True
                continue
            if generator is None and name not in together:
                seed = sample_seed(self.seed, epoch, row)
                generator = torch.Generator().manual_seed(seed)
            try:
                if name in together:
                    item["inputs"][name] = self.fetch(name, value)
                else:
                    item["inputs"][name] = self.load(name, value, generator, staged)
            except DecodeTimeout as e:
                return Skipped(row, column, _path_of(value), "timeout", "timeout", str(e))
            except MediaError as e:
                return Skipped(row, column, str(e.path), "decode", e.reason, e.detail or str(e))
            except Exception as e:  # a bug in a decoder must not end the epoch either
                return self._preprocess_failed(name, item, e)
            item["present"][name] = True
        if not any(item["present"].values()):
            return Skipped(row, None, None, "no-input", "empty", "every input cell is empty")
        item["labels"] = {t: int(v[row]) for t, v in self.labels.items()}
        if timing is not None:
            item["timing"] = timing
        return item

    def _stage_rows(self, name: str, out: list, staged: bool) -> None:
        """Stage input `name` of every item in `out` that holds it decoded, in place; `staged`
        False finishes them too. A row that fails alone becomes its `Skipped` record."""
        at = [i for i, it in enumerate(out) if not isinstance(it, Skipped) and it["present"][name]]
        if not at:
            return
        start = time.perf_counter()
        key, ids = self._stream_key(name), [_stream_row(out[i]) for i in at]
        raws = [out[i]["inputs"][name] for i in at]
        try:
            rows = self.loader.stage_rows(name, raws, RowStreams(key, ids))
            done = [rows.row(j) for j in range(len(at))]
        except Exception:  # find the sample at fault; the others get the same draws alone
            done = [self._stage_alone(name, out[i], raw, RowStreams(key, [row_id]))
                    for i, raw, row_id in zip(at, raws, ids)]  # fmt: skip
        if not staged:
            done = [self._finish_alone(name, out[i], v) for i, v in zip(at, done)]
        per_row = (time.perf_counter() - start) / len(at)
        for i, value in zip(at, done):
            if isinstance(value, Skipped):
                out[i] = value
                continue
            out[i]["inputs"][name] = value
            if "timing" in out[i]:
                out[i]["timing"]["preprocess"] += per_row

    def _stage_alone(self, name: str, item: dict, raw, streams: RowStreams):
        try:
            return self.loader.stage_rows(name, [raw], streams)
        except Exception as e:
            return self._preprocess_failed(name, item, e)

    def _finish_alone(self, name: str, item: dict, staged):
        if isinstance(staged, Skipped):
            return staged
        try:
            return self.loader.finish_batch(name, staged)[0]
        except Exception as e:
            return self._preprocess_failed(name, item, e)

    def _preprocess_failed(self, name: str, item: dict, error: Exception) -> Skipped:
        column, value = self.inputs[name].column, self.cells[name][item["row"]]
        reason, message = type(error).__name__, str(error)
        return Skipped(item["row"], column, _path_of(value), "preprocess", reason, message)

    def _stream_key(self, name: str) -> int:
        return sample_seed(self.seed, zlib.crc32(name.encode()), 1 << 40)

    def fetch(self, name: str, value):
        """Input `name`'s cell decoded (`SampleLoader.decode`, through the decoded-sample store
        when there is one); raises MediaError for a bad file."""
        start = time.perf_counter()
        store = self.decoded.get(name)
        raw = None if store is None else store.held(value)
        if raw is None:
            # A store hashes the file before it can look it up: that read is bounded too.
            with time_limit(self.decode_timeout):
                if store is None:
                    raw = self.loader.decode(name, value)
                else:
                    raw = store.fetch(value, functools.partial(self.loader.decode, name, value))
        if self._timing is not None:
            self._timing["read"] += time.perf_counter() - start
        return raw

    def load(
        self, name: str, value, generator: torch.Generator | None = None, staged: bool = False
    ):
        """Read and preprocess one cell of input `name` (`fetch`, then `SampleLoader.finish`,
        or `.stage`), with this row's `generator` (inputs `items` stages together ignore it)."""
        raw = self.fetch(name, value)
        start = time.perf_counter()
        finish = self.loader.stage if staged else self.loader.finish
        out = finish(name, raw, generator)
        if self._timing is not None:
            self._timing["preprocess"] += time.perf_counter() - start
        return out


class StagedView(torch.utils.data.Dataset):
    """`dataset`'s items with image, audio and video inputs staged (`item(key, staged=True)`),
    for a loader whose batches then go through `dataset.frontend()`."""

    def __init__(self, dataset: MultimodalDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset.item(key, staged=True)

    def __getitems__(self, keys) -> list:
        return self.dataset.items(keys, staged=True)


def _label_text(value) -> str:
    # Integer labels read from CSV come back as numpy ints or floats like 3.0; classes are strings.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _stream_row(item: dict) -> int:
    return item["epoch"] << 32 | item["row"]


def _path_of(value) -> str | None:
    return str(value) if isinstance(value, str) and len(value) < 4096 else None
