"""The training loop: one `Trainer` for every model, modality mix and option.

What it adds to the textbook loop (DataLoader → forward → loss → backward → step), and why:

- **Exact resume.** Data order comes from `(seed, epoch)`, each sample's augmentation from
  `(seed, epoch, row)` (see `dataset.py`), and the DataLoader gets its own generator so that
  creating an iterator never draws from the global RNG that dropout uses. A checkpoint holds
  model, optimiser, scheduler, every RNG and the position in the epoch, so a run killed at any
  point and resumed ends with bit-identical weights.
- **Bad samples never stop an epoch**: they arrive as `Skipped` records and are reported.
- **Frozen encoders are run once**: their features are cached on disk (`feature_cache.py`) and
  held in memory, so later epochs train only the fusion and the heads.
- Transfer learning per input (frozen, fine-tuned, or fine-tuned after N epochs with its own
  learning rate), mixed precision, channels-last, modality dropout, mixup, FGSM, early stopping.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmfuse import distributed
from mmfuse.device import resolve_device
from mmfuse.errors import MmfuseError
from mmfuse.evaluate.metrics import classification_metrics
from mmfuse.fusion.modality_dropout import drop_modalities
from mmfuse.infer.batch import collate
from mmfuse.infer.dataset import MultimodalDataset, Skipped
from mmfuse.infer.engine import PredictOptions, autocast, predict_dataset, to_device
from mmfuse.model.config import ModelConfig
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.train import checkpoint as ckpt
from mmfuse.train.cached_features import fill_feature_cache
from mmfuse.train.config import TrainConfig
from mmfuse.train.logger import MetricsLogger
from mmfuse.train.losses import (
    IGNORE_INDEX,
    balanced_class_weights,
    mix,
    mixup_loss,
    mixup_pairs,
    multitask_loss,
)
from mmfuse.train.optim import build_optimizer, build_scheduler, param_groups


class BadSampleError(MmfuseError):
    """A sample failed to load under `on_bad_sample="error"`."""


@dataclass
class FitResult:
    history: list[dict]
    best_metric: float | None
    best_epoch: int | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    skipped: list[Skipped] = field(default_factory=list)
    stopped_early: bool = False
    cache_time: float = 0.0  # seconds spent filling the feature cache before epoch 1


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch: a function of (seed, epoch) only."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    return rng.permutation(n).tolist()


class Trainer:
    """Train a `MultimodalModel` into `run_dir` (checkpoints, metrics.jsonl, skipped.json)."""

    def __init__(
        self,
        model: MultimodalModel,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        model_config: ModelConfig | None = None,
        log: Callable[[str], None] = print,
    ):
        self.model = model
        self.config = config
        self.model_config = model_config
        self.run_dir = Path(run_dir)
        # Under torchrun: this process's rank; only rank 0 logs and writes files.
        self.dist = distributed.from_env()
        self.log = log if self.dist.is_main else _quiet
        self.device = distributed.setup(self.dist, resolve_device(config.device))
        # `batch_size` is the global batch: each of the `world` ranks takes its share, so the
        # averaged gradient is that of one batch of batch_size, however many processes run.
        self.batch_size = max(1, config.batch_size // self.dist.world)
        self.tasks = list(model.tasks)
        # Mixup and modality dropout: each rank draws its own.
        self.rng = torch.Generator().manual_seed(config.seed + self.dist.rank)
        self.net: torch.nn.Module = model  # what training steps call: the model, or its DDP
        self.skipped: list[Skipped] = []
        self._cached: set[str] = set()  # inputs whose batches hold cached features
        self._val_skipped: list[Skipped] = []

    # ------------------------------------------------------------------ set-up
    def _saved_config(self) -> dict:
        out = {"train": self.config.to_dict()}
        if self.model_config is not None:
            out["model"] = self.model_config.to_dict()
        return out

    def _unfreeze_due(self, epoch: int) -> None:
        """Start fine-tuning the encoders whose frozen warm-up ends at this epoch."""
        if self.model_config is None:
            return
        for name, spec in self.model_config.inputs.items():
            encoder = self.model.encoders[name]
            if spec.mode == "finetune" and 0 < spec.finetune_after <= epoch and encoder.frozen:
                encoder.unfreeze()
                self.log(f"epoch {epoch + 1}: fine-tuning the {name!r} encoder from now on")

    def _optimizer(self):
        cfg = self.config
        never_trained = set()
        if self.model_config is not None:
            never_trained = {n for n, s in self.model_config.inputs.items() if s.mode == "freeze"}
        backbone = [
            (f"encoders.{n}.{p}", w)
            for n in self.model.names
            if n not in never_trained
            for p, w in self.model.encoders[n].named_parameters()
        ]
        head = [(n, w) for n, w in self.model.named_parameters() if not n.startswith("encoders.")]
        groups = param_groups(
            {"backbone": (backbone, cfg.backbone_lr or cfg.lr), "head": (head, cfg.lr)},
            cfg.weight_decay,
        )
        return build_optimizer(groups, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum)

    def _loader(self, dataset, batches: list[list], shuffle_seed: int):
        cfg = self.config
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=cfg.workers,
            collate_fn=collate,
            # Its own generator: creating an iterator must not draw from the global RNG that
            # dropout uses, or a resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(shuffle_seed),
            pin_memory=self.device.type == "cuda",
        )

    def _cacheable(self) -> list[str]:
        if not self.config.cache_features or self.model_config is None:
            return []
        if getattr(self.model.fusion, "uses_tokens", False):
            self.log(
                f"feature cache off: fusion {self.model.fusion.name!r} reads token sequences "
                "and the cache stores pooled features"
            )
            return []
        return [n for n, s in self.model_config.inputs.items() if s.mode == "freeze"]

    def prepare_cache(self, *datasets: MultimodalDataset | None) -> None:
        """Fill the feature cache for frozen inputs and attach the features to the datasets
        (`dataset.features[name]`, N×D), which then serve them instead of decoding."""
        names = self._cacheable()
        self.model.to(self.device)
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
            if names and not self.dist.is_main:
                distributed.barrier(self.dist)
            for name in names:
                feats, errors = fill_feature_cache(
                    dataset,
                    name,
                    self.model.encoders[name],
                    cache_dir=self.config.cache_dir,
                    batch_size=self.config.batch_size,
                    workers=self.config.workers,
                    device=self.device,
                    progress=self.config.progress,
                )
                dataset.features[name] = feats
                dataset.feature_errors[name] = errors
                dataset.placeholders[name] = torch.zeros(feats.shape[1])
            if names and self.dist.is_main:
                distributed.barrier(self.dist)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: MultimodalDataset,
        val: MultimodalDataset | None = None,
        *,
        resume: bool = False,
    ) -> FitResult:
        cfg = self.config
        if self.dist.enabled and cfg.fgsm_epsilon > 0:
            raise MmfuseError(
                "fgsm_epsilon > 0 needs two forward passes per step, which DistributedDataParallel "
                "does not allow; train FGSM in a single process"
            )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier(self.dist)
        torch.manual_seed(cfg.seed)
        started = time.perf_counter()
        self.prepare_cache(train, val)
        self.cache_time = time.perf_counter() - started
        self._cached = set(train.features)
        model = self.model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = self._optimizer()
        steps_per_epoch = math.ceil(math.ceil(len(train) / self.dist.world) / self.batch_size)
        scheduler = build_scheduler(
            optimizer,
            schedule=cfg.schedule,
            total_steps=cfg.epochs * steps_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            step_size=max(1, cfg.step_epochs * steps_per_epoch),
            gamma=cfg.gamma,
            min_lr_ratio=cfg.min_lr_ratio,
        )
        self.class_weights = None
        if cfg.class_weights == "balanced":
            self.class_weights = {
                t: balanced_class_weights(train.labels[t], len(train.tasks[t])).to(self.device)
                for t in self.tasks
            }
        state = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "history": [],
            "best": None,
            "best_epoch": None,
            "bad_epochs": 0,
            "skipped": [],
            # Sums over the batches of the epoch so far (loss × rows, rows), saved mid-epoch so
            # that a resumed epoch reports the same mean train_loss as an uninterrupted one.
            "epoch_loss": 0.0,
            "epoch_rows": 0,
        }
        if resume:
            state = self._resume(optimizer, scheduler, state)
        self.skipped = [Skipped(**s) for s in state["skipped"]]
        logger = _NoLogger()
        if self.dist.is_main:
            logger = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard)
            logger.rewrite(state["history"])
        stopped_early = False
        step = state["step"]
        for epoch in range(state["epoch"], cfg.epochs):
            self._unfreeze_due(epoch)
            self.net = self._wrap(model)  # again each epoch: unfreezing changes what DDP syncs
            first_batch = state["batch"] if epoch == state["epoch"] else 0
            train_loss, seen, took = self._train_epoch(
                train, optimizer, scheduler, epoch, first_batch, step, state
            )
            step = state["step"]
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": train_loss,
                "lr": _head_lr(optimizer),
                "train_time": took,
                "samples_per_s": seen / took if took else None,
            }
            if val is not None:
                record.update(self.validate(val))
                if epoch == state["epoch"] and self._val_skipped:  # once per run is enough
                    self.log(
                        f"validation: {len(self._val_skipped)} sample(s) could not be loaded and "
                        f"are left out of the validation metrics, e.g. {self._val_skipped[0]}"
                    )
            state["history"].append(record)
            logger.write(record)
            self.log(_epoch_line(record, cfg.epochs))
            improved = self._improved(record, state)
            state.update(epoch=epoch + 1, batch=0, epoch_loss=0.0, epoch_rows=0)
            last = self._save(model, optimizer, scheduler, state)
            if improved and last is not None:
                ckpt.mark_best(last, verify=False)  # just written and hashed by this process
            if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                self.log(f"early stop: {cfg.monitor} has not improved for {cfg.patience} epochs")
                stopped_early = True
                break
        logger.close()
        self.net = model
        self._gather_skipped()
        if self.dist.is_main:
            self._write_skipped()
        distributed.barrier(self.dist)
        return FitResult(
            history=state["history"],
            best_metric=state["best"],
            best_epoch=state["best_epoch"],
            best_checkpoint=ckpt.best_checkpoint(self.run_dir),
            last_checkpoint=ckpt.latest_checkpoint(self.run_dir),
            skipped=list(self.skipped),
            stopped_early=stopped_early,
            cache_time=self.cache_time,
        )

    def _resume(self, optimizer, scheduler, state: dict) -> dict:
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is None:
            self.log(f"--resume: no checkpoint in {self.run_dir} yet; starting from scratch")
            return state
        # Encoders already fine-tuning at that point must be trainable before the state loads.
        saved = json.loads((latest / "meta.json").read_text())
        self._unfreeze_due(int(saved.get("epoch", 0)))
        info = ckpt.load_checkpoint(
            latest,
            self.model,
            optimizer,
            scheduler,
            generators={"train": self.rng},
            map_location=self.device,
            verify=False,
        )
        state = dict(info["extra"]["trainer"])
        # A kill between writing an epoch's checkpoint and marking it best leaves the mark on
        # an older one; the saved state knows which epoch was best.
        best = ckpt.best_checkpoint(self.run_dir)
        if (
            self.dist.is_main
            and state["batch"] == 0
            and state["best_epoch"] == state["epoch"]
            and (best is None or _step_of(best) != _step_of(latest))
        ):
            ckpt.mark_best(latest)
        self.log(f"resumed from {latest.name}: epoch {state['epoch'] + 1}, batch {state['batch']}")
        return state

    def _wrap(self, model):
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # An input absent from every row of a batch is not encoded, so its encoder has no
        # gradient that step: DDP must be told to expect unused parameters.
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def _gather_skipped(self) -> None:
        if not self.dist.enabled:
            return
        merged: dict = {}
        for part in distributed.gather(self.dist, [s.to_dict() for s in self.skipped]):
            for s in part:
                merged.setdefault((s["row"], s["column"]), s)
        self.skipped = [Skipped(**s) for s in merged.values()]

    def _save(self, model, optimizer, scheduler, state: dict) -> Path | None:
        """Rank 0 writes the checkpoint; every rank waits until it is complete."""
        state["skipped"] = [s.to_dict() for s in self.skipped]
        if not self.dist.is_main:
            distributed.barrier(self.dist)
            return None
        path = self._write_checkpoint(model, optimizer, scheduler, state)
        distributed.barrier(self.dist)
        return path

    def _write_checkpoint(self, model, optimizer, scheduler, state: dict) -> Path:
        return ckpt.save_checkpoint(
            self.run_dir,
            model,
            optimizer,
            scheduler,
            epoch=state["epoch"],
            step=state["step"],
            best_metric=state["best"],
            extra={"trainer": state},
            config=self._saved_config(),
            generators={"train": self.rng},
        )

    def _improved(self, record: dict, state: dict) -> bool:
        cfg = self.config
        value = record.get(cfg.monitor)
        if value is None:
            if cfg.monitor.startswith("val_") and "val_loss" not in record:
                # No validation data: keep the last epoch as the best.
                state.update(best_epoch=record["epoch"])
                return True
            raise MmfuseError(
                f"monitor={cfg.monitor!r} is not among the epoch metrics "
                f"{sorted(k for k in record if isinstance(record[k], float))}; set monitor to one"
            )
        best = state["best"]
        better = best is None or (value < best if cfg.monitor_mode == "min" else value > best)
        if better:
            state.update(best=value, best_epoch=record["epoch"], bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        return better

    def _train_epoch(self, train, optimizer, scheduler, epoch, first_batch, step, state):
        cfg = self.config
        order = distributed.rank_slice(
            epoch_order(len(train), cfg.seed, epoch), self.dist, pad=True
        )
        size = self.batch_size
        batches = [[(epoch, r) for r in order[i : i + size]] for i in range(0, len(order), size)]
        loader = self._loader(train, batches[first_batch:], cfg.seed + epoch)
        self.model.train()
        total, count, seen = 0.0, 0, 0
        if first_batch:
            # .get: a checkpoint written before these sums were saved resumes as before.
            total, count = state.get("epoch_loss", 0.0), state.get("epoch_rows", 0)
        start = time.perf_counter()
        bar = _progress(
            loader, cfg.progress, f"epoch {epoch + 1}/{cfg.epochs}", len(batches), first_batch
        )
        for b, batch in enumerate(bar, start=first_batch):
            self._note_skipped(batch["skipped"])
            if "inputs" in batch:
                loss = self._step(batch, optimizer, scheduler)
                n = len(batch["rows"])
                total, count, seen = total + loss * n, count + n, seen + n
                if bar is not loader:
                    took = time.perf_counter() - start
                    bar.set_postfix(
                        loss=f"{total / max(count, 1):.4f}", samples_s=f"{seen / took:.0f}"
                    )
            state["step"] += 1
            due = cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0
            # The epoch-end checkpoint covers the last batch.
            if due and b + 1 < len(batches):
                state.update(epoch=epoch, batch=b + 1, epoch_loss=total, epoch_rows=count)
                self._save(self.model, optimizer, scheduler, state)
        took = time.perf_counter() - start
        total, count = distributed.sum_across(self.dist, total, count)
        return (total / count if count else float("nan")), seen, took

    def _note_skipped(self, skipped: list[Skipped]) -> None:
        for s in skipped:
            if self.config.on_bad_sample == "error":
                raise BadSampleError(
                    f"{s}; fix or remove the file, or set on_bad_sample='skip' to leave such "
                    "samples out and report them"
                )
            # A bad file fails again every epoch; report it once.
            if (s.row, s.column) not in {(k.row, k.column) for k in self.skipped}:
                self.skipped.append(s)

    def _batch_to_device(self, batch) -> tuple[dict, dict, Tensor, dict]:
        """Split a batch into raw inputs and cached features, on the device; tokenize text."""
        inputs, features = to_device(
            self.model,
            batch["inputs"],
            self.device,
            cached=self._cached,
            channels_last=self.config.channels_last,
        )
        mask = batch["mask"].to(self.device)
        labels = {t: y.to(self.device) for t, y in batch["labels"].items()}
        return inputs, features, mask, labels

    def _autocast(self):
        return autocast(self.device, self.config.precision)

    def _loss(self, inputs, features, mask, labels):
        with self._autocast():
            logits = self.net(inputs, mask, features)
        logits = {t: v.float() for t, v in logits.items()}
        return logits, lambda targets: multitask_loss(
            logits,
            targets,
            task_weights=self._task_weights(),
            class_weights=self.class_weights,
            label_smoothing=self.config.label_smoothing,
        )

    def _task_weights(self) -> dict[str, float] | None:
        if self.model_config is None:
            return None
        return {h.task: h.weight for h in self.model_config.heads}

    def _step(self, batch, optimizer, scheduler) -> float:
        cfg = self.config
        inputs, features, mask, labels = self._batch_to_device(batch)
        p = self.model_config.fusion.modality_dropout if self.model_config else 0.0
        if p > 0:
            mask = drop_modalities(mask, p, self.rng)
        if cfg.mixup_alpha > 0 and len(mask) > 1:
            perm, lam = mixup_pairs(len(mask), cfg.mixup_alpha, self.rng)
            perm = perm.to(self.device)
            inputs = {n: mix(x, perm, lam) if _is_float(x) else x for n, x in inputs.items()}
            features = {n: mix(x, perm, lam) for n, x in features.items()}
            mask = mask | mask[perm]
            _, loss_fn = self._loss(inputs, features, mask, labels)
            loss, _ = mixup_loss(loss_fn, labels, perm, lam)
        else:
            float_inputs = [n for n, x in inputs.items() if _is_float(x)]
            if cfg.fgsm_epsilon > 0 and float_inputs:
                inputs = {
                    n: x.requires_grad_(True) if n in float_inputs else x for n, x in inputs.items()
                }
            _, loss_fn = self._loss(inputs, features, mask, labels)
            loss, _ = loss_fn(labels)
            if cfg.fgsm_epsilon > 0 and float_inputs:
                loss = self._with_fgsm(loss, inputs, features, mask, labels, float_inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None],
                cfg.grad_clip,
            )
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    def _with_fgsm(self, loss, inputs, features, mask, labels, names) -> Tensor:
        """Goodfellow et al.'s FGSM: also train on x + ε·sign(∇ₓ loss), half weight each."""
        # allow_unused: an input that no row of this batch has is never encoded, so it has no
        # gradient (None) and is left as it is.
        grads = torch.autograd.grad(
            loss, [inputs[n] for n in names], retain_graph=True, allow_unused=True
        )
        adversarial = dict(inputs)
        for n, g in zip(names, grads):
            if g is not None:
                adversarial[n] = (inputs[n] + self.config.fgsm_epsilon * g.sign()).detach()
        _, loss_fn = self._loss(adversarial, features, mask, labels)
        adv_loss, _ = loss_fn(labels)
        return 0.5 * (loss + adv_loss)

    # ------------------------------------------------------------------ evaluation
    def predict_options(self) -> PredictOptions:
        """How this run predicts (its batch size, workers, device and precision)."""
        cfg = self.config
        return PredictOptions(
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            device=str(self.device),
            precision=cfg.precision,
            channels_last=cfg.channels_last,
            seed=cfg.seed,
        )

    def predict(
        self,
        dataset: MultimodalDataset,
        *,
        keep: Mapping[str, Mapping[str, bool]] | None = None,
    ) -> dict:
        """Class probabilities for every loadable row of `dataset`, through `infer.engine`
        (`predict_batches`' dict, with the validation loss), gathered across ranks."""
        task_weights = self._task_weights()
        return predict_dataset(
            self.model,
            dataset,
            self.predict_options(),
            variants=keep,
            loss_fn=lambda logits, labels: multitask_loss(
                logits, labels, task_weights=task_weights
            )[0],
            dist=self.dist,
        )

    def validate(self, dataset: MultimodalDataset) -> dict:
        """`val_loss` and `val_<metric>` for the first task (`val_<task>_<metric>` for others)."""
        out = self.predict(dataset)
        self._val_skipped = out["skipped"]
        record = {"val_loss": out["loss"]}
        for i, task in enumerate(self.tasks):
            y = out["labels"][task]
            labelled = y != IGNORE_INDEX
            if not labelled.any():
                continue
            m = classification_metrics(
                y[labelled],
                proba=out["proba"]["all"][task][labelled],
                labels=dataset.tasks[task],
                top_k=(),
            )
            prefix = "val_" if i == 0 else f"val_{task}_"
            for key in ("accuracy", "balanced_accuracy", "f1_macro"):
                record[prefix + key] = m[key]
        self.model.train()
        return record

    def _write_skipped(self) -> None:
        path = self.run_dir / "skipped.json"
        path.write_text(json.dumps([s.to_dict() for s in self.skipped], indent=2) + "\n")
        if self.skipped:
            by_reason: dict[str, int] = {}
            for s in self.skipped:
                by_reason[f"{s.stage}/{s.reason}"] = by_reason.get(f"{s.stage}/{s.reason}", 0) + 1
            self.log(
                f"skipped {len(self.skipped)} sample loads ("
                + ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items()))
                + f"); every one is listed in {path}"
            )
            for s in self.skipped[:5]:
                self.log(f"  {s}")


class _NoLogger:
    """What ranks other than 0 log to: nothing."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _quiet(message: str) -> None:
    pass


def _step_of(path: Path) -> str:
    return path.name.rsplit("-", 1)[-1]


def _head_lr(optimizer) -> float:
    # The fusion and heads' rate, i.e. `lr` as scheduled. Group 0 is the encoders' group whenever
    # one is trained, which would log `backbone_lr` under the name `lr`.
    for group in optimizer.param_groups:
        if group.get("name", "").split("/")[0] == "head":
            return group["lr"]
    return optimizer.param_groups[0]["lr"]


def _is_float(x) -> bool:
    return isinstance(x, Tensor) and x.is_floating_point()


def _epoch_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for key, value in record.items():
        if key in ("epoch", "step") or value is None:
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def _progress(loader, enabled: bool, desc: str, total: int, initial: int):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, total=total, initial=initial, leave=False, unit="batch")
