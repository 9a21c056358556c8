"""Fill the on-disk feature cache for one frozen input of a dataset, then hold it in memory.

A frozen encoder gives the same output for the same file on every epoch and in every run, so
it is run once per file: entries are keyed by the file's content hash under a folder named by
the encoder's fingerprint (config, input spec, weights). Later epochs read an N×D tensor, and
later runs find the entries on disk and skip decoding and encoding altogether.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from mmfuse import distributed
from mmfuse.data.cache import default_cache_dir
from mmfuse.data.modalities import reads_file
from mmfuse.distributed import DistInfo
from mmfuse.infer.batch import batches_of, row_loader
from mmfuse.infer.dataset import MultimodalDataset, Skipped
from mmfuse.model.config import ModelConfig
from mmfuse.model.multimodal import MultimodalModel, encoder_input
from mmfuse.train.config import TrainConfig
from mmfuse.train.feature_cache import FeatureCache, content_hash, encoder_fingerprint


def cacheable_inputs(
    model: MultimodalModel,
    model_config: ModelConfig | None,
    config: TrainConfig,
    log: Callable[[str], None],
) -> list[str]:
    """The frozen inputs whose features a fit with `config` caches."""
    if not config.cache_features or model_config is None:
        return []
    if getattr(model.fusion, "uses_tokens", False):
        log(
            f"feature cache off: fusion {model.fusion.name!r} reads token sequences "
            "and the cache stores pooled features"
        )
        return []
    return [n for n, s in model_config.inputs.items() if s.mode == "freeze"]


def attach_cached_features(
    datasets: Iterable[MultimodalDataset | None],
    names: list[str],
    model: MultimodalModel,
    config: TrainConfig,
    device: torch.device,
    dist: DistInfo,
) -> None:
    """Fill the cache for inputs `names` and attach the features to each dataset
    (`dataset.features[name]`, N×D), which then serves them instead of decoding."""
    for dataset in datasets:
        if dataset is None:
            continue
        # Features an earlier fit attached for inputs this run trains (or does not cache)
        # would be stale: load those inputs from their files again.
        for stale in set(dataset.features) - set(names):
            del dataset.features[stale]
            dataset.feature_errors.pop(stale, None)
            dataset.placeholders[stale] = dataset.placeholder(stale)
        # Rank 0 fills the cache; the others wait, then find every entry and only read.
        if names and not dist.is_main:
            distributed.barrier(dist)
        for name in names:
            feats, errors = _fill(dataset, name, model, config, device)
            dataset.features[name] = feats
            dataset.feature_errors[name] = errors
            dataset.placeholders[name] = torch.zeros(feats.shape[1])
        if names and dist.is_main:
            distributed.barrier(dist)


def _fill(dataset, name, model, config, device) -> tuple[torch.Tensor, dict[int, Skipped]]:
    """`fill_feature_cache` for input `name` of `model`, with the fit's settings."""
    return fill_feature_cache(
        dataset,
        name,
        model.encoders[name],
        cache_dir=config.cache_dir,
        batch_size=config.batch_size,
        workers=config.workers,
        device=device,
        progress=config.progress,
    )


def fill_feature_cache(
    dataset: MultimodalDataset,
    name: str,
    encoder: torch.nn.Module,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, dict[int, Skipped]]:
    """Features of input `name` for every row (N×D, zeros where absent or failed) and the
    rows that failed to load, computing only what the cache lacks."""
    manifest, spec = dataset.manifest, dataset.inputs[name]
    is_path = reads_file(spec.modality, spec.column, manifest.text_files)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    description = {"input": name, "modality": spec.modality, "encoder": spec.encoder}
    cache = FeatureCache(root / "features", encoder_fingerprint(encoder), description=description)
    out = torch.zeros(len(dataset), encoder.output_dim)
    errors: dict[int, Skipped] = {}
    keys: dict[int, str] = {}
    for row, value in enumerate(dataset.cells[name]):
        if value is None:
            continue
        try:
            key = content_hash(value, is_path=is_path)
        except OSError as e:
            errors[row] = Skipped(row, spec.column, str(value), "decode", "missing", str(e))
            continue
        feature = cache.get(key)
        if feature is None:
            keys[row] = key
        else:
            out[row] = feature
    if keys:

        def keep(row: int, feature: torch.Tensor) -> None:
            cache.put(keys[row], feature)
            out[row] = feature

        encode_rows(
            dataset,
            name,
            encoder,
            list(keys),
            keep,
            errors,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=progress,
        )
    return out, errors


def fit_scalers(
    model: MultimodalModel,
    dataset: MultimodalDataset,
    config: TrainConfig,
    device: torch.device,
) -> None:
    """Set each of `model.scalers` from its input's features on the training rows that have
    it. A scaler already fitted (a saved model fine-tuned again, as pruning does) keeps the
    statistics its heads were trained with."""
    for name, scaler in model.scalers.items():
        if scaler.fitted:
            continue
        feats, errors = _training_features(dataset, name, model, config, device)
        cells = dataset.cells[name]
        rows = [r for r, v in enumerate(cells) if v is not None and r not in errors]
        scaler.fit(feats[rows])


def _training_features(dataset, name, model, config, device):
    """`(N×D features, {row: Skipped})` of input `name`: the attached cached features, else
    the cache filled now (a `best` fit's encoders are still the pretrained ones: they
    fine-tune later), else one pass of the encoder."""
    if name in dataset.features:
        return dataset.features[name], dataset.feature_errors.get(name, {})
    if config.cache_features:
        return _fill(dataset, name, model, config, device)
    encoder = model.encoders[name]
    out = torch.zeros(len(dataset), encoder.output_dim)
    errors: dict[int, Skipped] = {}
    encode_rows(
        dataset,
        name,
        encoder,
        [r for r, v in enumerate(dataset.cells[name]) if v is not None],
        out.__setitem__,
        errors,
        batch_size=config.batch_size,
        workers=config.workers,
        device=device,
        progress=config.progress,
        verb="measuring",
    )
    return out, errors


def encode_rows(
    dataset: MultimodalDataset,
    name: str,
    encoder: torch.nn.Module,
    rows: list[int],
    keep: Callable[[int, torch.Tensor], None],
    errors: dict[int, Skipped],
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    verb: str = "caching",
) -> None:
    """`keep(row, D feature)` for each of `rows` that loads, encoded in eval mode; the rows
    that fail land in `errors`."""
    # Eval-mode preprocessing only: a cached feature must not depend on one epoch's augmentation.
    single = MultimodalDataset(
        dataset.manifest,
        {name: dataset.inputs[name]},
        {name: dataset.specs[name]},
        {},
        train=False,
        decode_timeout=dataset.decode_timeout,
    )
    loader = row_loader(single, batches_of(sorted(rows), batch_size), workers=workers)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=f"{verb} {name!r} features", unit="batch", leave=False)
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        for batch in loader:
            for s in batch["skipped"]:
                errors[s.row] = s
            if "inputs" not in batch:
                continue
            x = encoder_input(encoder, batch["inputs"][name], device)
            features = encoder(x).float().cpu()  # b×D
            for row, feature in zip(batch["rows"].tolist(), features):
                keep(row, feature)
    encoder.train(was_training)
