"""The training loop: one `Trainer` for every model, modality mix and option.

What it adds to the textbook loop (DataLoader → forward → loss → backward → step), and why:

- **Exact resume.** Data order comes from `(seed, epoch)`, each sample's augmentation from
  `(seed, epoch, row)` (see `dataset.py`), and the DataLoader gets its own generator so that
  creating an iterator never draws from the global RNG that dropout uses. A checkpoint holds
  model, optimiser, scheduler, every RNG and the position in the epoch, so a run killed at any
  point and resumed ends with bit-identical weights.
- **Bad samples never stop an epoch**: they arrive as `Skipped` records and are reported. A
  split where most samples fail stops before training instead (`preflight.py`).
- **No step on a non-finite loss**: the batch is skipped and its rows named (`nonfinite.py`);
  many in a row stop the run. Checkpoints refuse non-finite weights.
- **Frozen encoders are run once**: their features are cached on disk (`feature_cache.py`) and
  held in memory, so later epochs train only the fusion and the heads.
- Transfer learning per input (frozen, fine-tuned, or fine-tuned after N epochs with its own
  learning rate), mixed precision, channels-last, modality dropout, mixup, FGSM, early stopping.

`fit` is set-up → epochs → finish, each a short method. One optimisation step (mixup, FGSM,
modality dropout, the loss) is `step.py`; the loop's position, best metric and checkpoints are
`state.py`; unloadable samples are `skipped.py`; validation predicts through `infer.engine`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmfuse import distributed
from mmfuse.device import resolve_device
from mmfuse.errors import MmfuseError
from mmfuse.infer.batch import resolve_workers, row_loader
from mmfuse.infer.dataset import MultimodalDataset, Skipped, StagedView
from mmfuse.infer.engine import PredictOptions, predict_dataset
from mmfuse.model.config import ModelConfig
from mmfuse.model.multimodal import MultimodalModel
from mmfuse.train._ckpt_io import no_space_is_an_error
from mmfuse.train.allocator import keep_freed_memory
from mmfuse.train.batches import FitBatches, batches_per_epoch, epoch_order
from mmfuse.train.cached_features import attach_cached_features, cacheable_inputs, fit_scalers
from mmfuse.train.checkpoint import best_checkpoint, latest_checkpoint
from mmfuse.train.config import TrainConfig
from mmfuse.train.decoded_cache import attach_decoded_stores
from mmfuse.train.logger import MetricsLogger, NoLogger, epoch_line, progress, quiet
from mmfuse.train.losses import multitask_loss
from mmfuse.train.nonfinite import NonFiniteLossError, skip_nonfinite, stop_error
from mmfuse.train.optim import head_lr, optimizer_for, scheduler_for
from mmfuse.train.preflight import check_loadable
from mmfuse.train.profile import StageClock, profile_line
from mmfuse.train.skipped import BadSampleError, gather_skipped, note_skipped, write_skipped
from mmfuse.train.state import LoopState, RunCheckpoints
from mmfuse.train.step import StepContext, StepResult, task_weights, train_step
from mmfuse.train.validation import validation_record

__all__ = ["BadSampleError", "FitResult", "NonFiniteLossError", "Trainer", "epoch_order"]


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


@dataclass
class _Fit:
    """What `fit` sets up once and every epoch uses."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: LoopState
    step: StepContext
    checkpoints: RunCheckpoints
    logger: MetricsLogger | NoLogger
    # One loader and one iterator over every epoch's batches (`batches.FitBatches`): its
    # workers start once and read ahead across epoch ends.
    loader: torch.utils.data.DataLoader | None
    workers: int
    stream: Iterator[dict] | None = None


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
        self.log = log if self.dist.is_main else quiet
        self.device = distributed.setup(self.dist, resolve_device(config.device))
        self.config = config.for_device(self.device)
        # `batch_size` is the global batch: each of the `world` ranks takes its share, so the
        # averaged gradient is that of one batch of batch_size, however many processes run.
        self.batch_size = max(1, config.batch_size // self.dist.world)
        self.tasks = list(model.tasks)
        # Mixup and modality dropout: each rank draws its own.
        self.rng = torch.Generator().manual_seed(config.seed + self.dist.rank)
        self.skipped: list[Skipped] = []
        self.cache_time = 0.0
        self._val_skipped: list[Skipped] = []

    # ------------------------------------------------------------------ set-up
    def _saved_config(self) -> dict:
        out = {"train": self.config.to_dict()}
        if self.model_config is not None:
            out["model"] = self.model_config.to_dict()
        return out

    def prepare_cache(self, *datasets: MultimodalDataset | None) -> None:
        """Fill the feature cache for frozen inputs and attach the features to the datasets
        (`dataset.features[name]`, N×D), which then serve them instead of decoding."""
        names = cacheable_inputs(self.model, self.model_config, self.config, self.log)
        self.model.to(self.device)
        attach_cached_features(datasets, names, self.model, self.config, self.device, self.dist)

    def _setup(self, train: MultimodalDataset, val, resume: bool) -> _Fit:
        cfg = self.config
        if self.dist.enabled and cfg.fgsm_epsilon > 0:
            raise MmfuseError(
                "fgsm_epsilon > 0 needs two forward passes per step, which DistributedDataParallel "
                "does not allow; train FGSM in a single process"
            )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier(self.dist)
        for split, data in (("training", train), ("validation", val)):
            if data is not None:
                check_loadable(data, split, cfg.max_failed_share)
        torch.manual_seed(cfg.seed)
        if cfg.keep_freed_memory:
            keep_freed_memory()
        started = time.perf_counter()
        self.prepare_cache(train, val)
        # Before a resume loads the checkpoint's own (equal) statistics over these.
        fit_scalers(self.model, train, cfg, self.device)
        self.cache_time = time.perf_counter() - started
        on_cpu = self.device.type == "cpu"
        workers = resolve_workers(cfg.workers, len(train), trains_on_cpu=on_cpu)
        processes = (1 + workers) * self.dist.world  # each holds its own memory of the stores
        attach_decoded_stores((train, val), cfg, self.log, processes=processes)
        train.profile = cfg.profile
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        optimizer = optimizer_for(self.model, self.model_config, cfg)
        steps_per_epoch = batches_per_epoch(len(train), self.batch_size, self.dist)
        scheduler = scheduler_for(optimizer, cfg, steps_per_epoch)
        step = StepContext.for_fit(
            self.model, self.model_config, cfg, train, self.device, self.rng, self.dist
        )
        checkpoints = RunCheckpoints(
            self.run_dir, self.dist, {"train": self.rng}, self._saved_config(), self.log
        )
        state = LoopState()
        if resume:
            loaded = checkpoints.resume(
                self.model, optimizer, scheduler, device=self.device, before_load=self._unfreeze_due
            )
            state = loaded or state
        self.skipped = [Skipped(**s) for s in state.skipped]
        logger = NoLogger()
        if self.dist.is_main:
            logger = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard)
            logger.rewrite(state.history)
        sampler = FitBatches(
            len(train), cfg.seed, self.batch_size, self.dist, cfg.epochs, state.epoch, state.batch
        )
        # Log-mel and normalisation run per batch on the device (`features.batched`).
        loader = row_loader(
            StagedView(train), sampler, workers=workers, seed=cfg.seed, device=self.device
        )
        return _Fit(optimizer, scheduler, state, step, checkpoints, logger, loader, workers)

    def _unfreeze_due(self, epoch: int) -> None:
        """Start fine-tuning the encoders whose frozen warm-up ends at this epoch."""
        if self.model_config is None:
            return
        for name, spec in self.model_config.inputs.items():
            encoder = self.model.encoders[name]
            if spec.mode == "finetune" and 0 < spec.finetune_after <= epoch and encoder.frozen:
                encoder.unfreeze()
                self.log(f"epoch {epoch + 1}: fine-tuning the {name!r} encoder from now on")

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: MultimodalDataset,
        val: MultimodalDataset | None = None,
        *,
        resume: bool = False,
    ) -> FitResult:
        """Train on `train`, validating on `val` after each epoch; with `resume`, go on from the
        latest usable checkpoint in `run_dir` (from scratch if there is none at all).

        Raises UnloadableDataError before training when too many samples of a split fail to
        load, NonFiniteLossError after `max_nonfinite_batches` skipped batches in a row."""
        # Metrics, skipped.json and the best mark are written here too, not only checkpoints.
        with no_space_is_an_error(self.run_dir, "the run's files"):
            run = self._setup(train, val, resume)
            try:
                stopped_early = self._epochs(run, train, val)
            except NonFiniteLossError:
                self._write_skipped()  # the error sends the user there for the rows
                raise
            return self._finish(run, stopped_early)

    def _epochs(self, run: _Fit, train, val) -> bool:
        """Train, validate and checkpoint epoch after epoch; True when stopped early."""
        for epoch in range(run.state.epoch, self.config.epochs):
            self._unfreeze_due(epoch)
            # Each epoch: unfreezing changes what DDP syncs.
            run.step.net = distributed.wrap(self.model, self.dist, self.device)
            record = self._train_epoch(run, train, epoch)
            if val is not None:
                record.update(self.validate(val))
                if self._val_skipped:
                    self.log(
                        f"validation: {len(self._val_skipped)} sample(s) could not be loaded and "
                        f"are left out of the validation metrics, e.g. {self._val_skipped[0]}"
                    )
            if self._end_epoch(run, epoch, record):
                return True
        return False

    def _train_epoch(self, run: _Fit, train, epoch: int) -> dict:
        """One epoch from where the state stands (a mid-epoch checkpoint, or its start)."""
        cfg, state = self.config, run.state
        first = state.batch
        # How many batches the epoch has: the stream (`FitBatches`) holds the batches themselves.
        n_batches = batches_per_epoch(len(train), self.batch_size, self.dist)
        if run.stream is None:
            run.stream = iter(run.loader)
        # This epoch's share of the fit's one stream; the workers are already reading the next.
        mine = itertools.islice(run.stream, n_batches - first)
        clock = run.step.clock = StageClock(cfg.profile, self.device)
        self.model.train()
        # A resumed epoch goes on from the sums its mid-epoch checkpoint saved.
        total, count, seen = (state.epoch_loss, state.epoch_rows, 0) if first else (0.0, 0, 0)
        start = time.perf_counter()
        bar = progress(mine, cfg.progress, f"epoch {epoch + 1}/{cfg.epochs}", n_batches, first)
        for b, batch in enumerate(clock.batches(bar), start=first):
            note_skipped(self.skipped, batch["skipped"], cfg.on_bad_sample)
            if "inputs" in batch:
                out = train_step(run.step, batch, run.optimizer, run.scheduler)
                if out.stepped:
                    state.nonfinite_streak = 0
                    n = len(batch["rows"])
                    total, count, seen = total + out.loss * n, count + n, seen + n
                else:
                    self._skip_batch(run, train, batch, f"epoch {epoch + 1}, batch {b + 1}", out)
                if bar is not mine:
                    took = time.perf_counter() - start
                    bar.set_postfix(
                        loss=f"{total / max(count, 1):.4f}", samples_s=f"{seen / took:.0f}"
                    )
            state.step += 1
            due = cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
            # The epoch-end checkpoint covers the last batch.
            if due and b + 1 < n_batches:
                state.pause_at(epoch, b + 1, total, count)
                self._save(run)
        took = time.perf_counter() - start
        total, count = distributed.sum_across(self.dist, total, count)
        record = {
            "epoch": epoch + 1,
            "step": state.step,
            "train_loss": total / count if count else float("nan"),
            "lr": head_lr(run.optimizer),
            "train_time": took,
            "samples_per_s": seen / took if took else None,
        }
        if cfg.profile:
            record.update(clock.record(took))
            self.log(profile_line(record, run.workers))
        return record

    def _end_epoch(self, run: _Fit, epoch: int, record: dict) -> bool:
        """Log the record, checkpoint, mark the best; True when early stopping is due."""
        cfg, state = self.config, run.state
        state.history.append(record)
        run.logger.write(record)
        self.log(epoch_line(record, cfg.epochs))
        improved = state.update_best(record, cfg.monitor, cfg.monitor_mode)
        state.end_epoch(epoch)
        last = self._save(run)
        if improved and last is not None:
            run.checkpoints.mark_best(last)
        if cfg.patience is not None and state.bad_epochs >= cfg.patience:
            self.log(f"early stop: {cfg.monitor} has not improved for {cfg.patience} epochs")
            return True
        return False

    def _skip_batch(self, run: _Fit, train, batch: dict, where: str, out: StepResult) -> None:
        """A batch `train_step` did not step on: name its rows; stop when it keeps happening."""
        cfg, state = self.config, run.state
        skip_nonfinite(self.skipped, batch, train, where, out, config=cfg, log=self.log)
        state.nonfinite_streak += 1
        if state.nonfinite_streak >= (cfg.max_nonfinite_batches or math.inf):
            lr = head_lr(run.optimizer)
            raise stop_error(state.nonfinite_streak, where, out.why, self.run_dir, lr)

    def _write_skipped(self) -> None:
        self.skipped = gather_skipped(self.skipped, self.dist)
        if self.dist.is_main:
            write_skipped(self.run_dir, self.skipped, self.log)

    def _save(self, run: _Fit) -> Path | None:
        run.state.skipped = [s.to_dict() for s in self.skipped]
        return run.checkpoints.save(self.model, run.optimizer, run.scheduler, run.state)

    def _finish(self, run: _Fit, stopped_early: bool) -> FitResult:
        run.logger.close()
        # Let the last epoch's DDP wrapper go while every rank is still in the process group,
        # rather than whenever `run` happens to be collected.
        run.step.net = self.model
        # The workers end here (an early stop leaves batches read ahead), not whenever the
        # loader is collected.
        run.stream = run.loader = None
        self._write_skipped()
        distributed.barrier(self.dist)
        return FitResult(
            history=run.state.history,
            best_metric=run.state.best,
            best_epoch=run.state.best_epoch,
            best_checkpoint=best_checkpoint(self.run_dir),
            last_checkpoint=latest_checkpoint(self.run_dir),
            skipped=list(self.skipped),
            stopped_early=stopped_early,
            cache_time=self.cache_time,
        )

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
        weights = task_weights(self.model_config)
        return predict_dataset(
            self.model,
            dataset,
            self.predict_options(),
            variants=keep,
            loss_fn=lambda logits, labels: multitask_loss(logits, labels, task_weights=weights)[0],
            dist=self.dist,
        )

    def validate(self, dataset: MultimodalDataset) -> dict:
        """`val_loss` and `val_<metric>` for the first task (`val_<task>_<metric>` for others)."""
        out = self.predict(dataset)
        self._val_skipped = out["skipped"]
        record = validation_record(out, self.tasks, dataset.tasks)
        self.model.train()
        return record
