"""The contract every fusion method follows, the registry they live in, and shared helpers.

A fusion module maps per-modality features to one fused vector:

    fusion(features: {modality: B×D_m}, mask: B×M bool | None) -> B×D

Modalities are ordered by sorted name, fixed at construction from `input_dims`; column `j` of the
presence mask (True = present) refers to `fusion.modalities[j]`. A mask of None means every
modality is present.

Missing modalities are excluded *exactly*: before any method sees them, a missing modality's
input is replaced by zeros with `torch.where`, so NaN or inf placed in an absent slot can neither
reach the output nor send a gradient back. Each method then excludes the slot again in its own
way (softmax over present modalities only, a learned "missing" embedding, the neutral vector of
tensor fusion, ...), so the output for a sample depends only on its present inputs.

A row with no modality present is an error: there is nothing to fuse, and any output (zeros, a
bias) would be a silent guess. `ModalityDropout` never produces such a row.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmfuse.errors import MmfuseError
from mmfuse.registry import Registry

FUSIONS: Registry[type[Fusion]] = Registry("fusion method")


class FusionOptionError(MmfuseError, TypeError, ValueError):
    """An option the fusion method does not take (a TypeError, as for any bad keyword)."""


def register(name: str):
    """Class decorator: add a `Fusion` subclass to the registry under `name` (once only)."""

    def decorator(cls: type[Fusion]) -> type[Fusion]:
        FUSIONS.register(name)(cls)
        cls.name = name
        return cls

    return decorator


def available() -> list[str]:
    """The registered fusion method names, sorted."""
    return FUSIONS.names()


def build(name: str, input_dims: Mapping[str, int], output_dim: int, **options: Any) -> Fusion:
    """Build the fusion method `name` for `input_dims` ({modality: D_m}) producing `output_dim`.

    `options` are the method's keyword arguments; `fusion.config()` returns them so that
    `build(name, input_dims, output_dim, **fusion.config())` rebuilds the same architecture.
    """
    cls = FUSIONS.get(name)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "input_dims", "output_dim")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise FusionOptionError(
            f"fusion {name!r} has no option(s) {unknown}; valid options: {valid or '(none)'}"
        )
    return cls(input_dims, output_dim, **options)


def from_spec(spec: Mapping[str, Any]) -> Fusion:
    """Rebuild a fusion module from `Fusion.spec()` (e.g. read back from a checkpoint's JSON)."""
    return build(spec["name"], spec["input_dims"], spec["output_dim"], **spec.get("options", {}))


class Fusion(nn.Module):
    """Base class: input checks, the missing-modality guarantee and the forward template.

    Subclasses implement `fuse(xs, mask) -> (B×D output, B×M weights or None)` where `xs` are the
    checked inputs in `self.modalities` order with missing slots already zeroed, and `config()`.
    """

    name: ClassVar[str] = ""  # set by @register
    # Decision-level methods output logits (output_dim = number of classes): no head on top.
    is_decision_level: ClassVar[bool] = False
    # Methods that read `tokens=` (B×T_m×D_m sequences); the model computes tokens only for these.
    uses_tokens: ClassVar[bool] = False
    # Whether `fuse` returns per-sample modality weights (B×M) for `return_weights=True`;
    # an instance may override it when an option decides (late fusion's stacker has none).
    has_weights: bool = False

    def __init__(self, input_dims: Mapping[str, int], output_dim: int):
        super().__init__()
        self.input_dims = _check_input_dims(input_dims)
        self.modalities: tuple[str, ...] = tuple(self.input_dims)
        self.output_dim = check_positive_int("output_dim", output_dim)
        # Per-sample modality weights of the last forward (B×M, detached), for inspection.
        self.last_weights: Tensor | None = None

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def config(self) -> dict[str, Any]:
        """JSON-safe options: `build(name, input_dims, output_dim, **config())` rebuilds this."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this module (weights aside), JSON-safe."""
        return {
            "name": self.name,
            "input_dims": dict(self.input_dims),
            "output_dim": self.output_dim,
            "options": self.config(),
        }

    def extra_repr(self) -> str:
        return f"modalities={list(self.modalities)}, output_dim={self.output_dim}"

    def forward(
        self,
        features: Mapping[str, Tensor],
        mask: Tensor | None = None,
        *,
        tokens: Mapping[str, Tensor] | None = None,
        token_mask: Mapping[str, Tensor] | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Fuse `features` ({modality: B×D_m}) under the presence `mask` (B×M bool) into B×D.

        With `return_weights=True` also return the per-sample modality weights (B×M, rows sum to
        1 over present modalities, 0 on missing ones), for methods that have them.
        """
        if tokens is not None or token_mask is not None:
            raise ValueError(
                f"fusion {self.name!r} does not use token sequences; pass tokens= only to methods "
                f"with uses_tokens=True ({', '.join(_token_methods())})"
            )
        xs, mask = self.prepare(features, mask)
        out, weights = self.fuse(xs, mask)
        return self._finish(out, weights, return_weights)

    def fuse(self, xs: list[Tensor], mask: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _finish(
        self, out: Tensor, weights: Tensor | None, return_weights: bool
    ) -> Tensor | tuple[Tensor, Tensor]:
        self.last_weights = None if weights is None else weights.detach()
        if not return_weights:
            return out
        if weights is None:
            with_weights = [n for n in available() if FUSIONS.get(n).has_weights]
            raise ValueError(
                f"fusion {self.name!r} has no per-modality weights to return; call it with "
                f"return_weights=False, or use one of: {', '.join(with_weights)}"
            )
        # The live tensor, so a caller can put a loss on the weights (e.g. an entropy penalty).
        return out, weights

    def prepare(self, features: Mapping[str, Tensor], mask: Tensor | None) -> tuple[list, Tensor]:
        """Check inputs; return them in modality order with missing slots zeroed, and the mask."""
        if not isinstance(features, Mapping):
            raise TypeError(
                f"features must be a dict {{modality: B×D tensor}} with keys "
                f"{list(self.modalities)}, got {type(features).__name__}"
            )
        self._check_keys(features, "features")
        batch = None
        for m in self.modalities:
            x = features[m]
            if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.input_dims[m]:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(
                    f"features[{m!r}] must have shape B×{self.input_dims[m]}, got {got}; "
                    f"input_dims[{m!r}]={self.input_dims[m]} was fixed when the fusion was built"
                )
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                sizes = {k: features[k].shape[0] for k in self.modalities}
                raise ValueError(f"features disagree on batch size: {sizes}")
        first = features[self.modalities[0]]
        mask = self.check_mask(mask, batch, first.device)
        xs = [
            torch.where(mask[:, j, None], features[m], 0.0) for j, m in enumerate(self.modalities)
        ]
        return xs, mask

    def check_mask(self, mask: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Validate a B×M presence mask (None → all present) and refuse rows with nothing present."""
        order = list(self.modalities)
        if mask is None:
            return torch.ones(batch, self.num_modalities, dtype=torch.bool, device=device)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(
                f"mask must be a bool tensor (True = present), got {got}; use mask.bool()"
            )
        if tuple(mask.shape) != (batch, self.num_modalities):
            raise ValueError(
                f"mask must have shape B×M = {batch}×{self.num_modalities} with columns "
                f"{order} (sorted modality names), got {tuple(mask.shape)}"
            )
        if mask.device != device:
            raise ValueError(
                f"mask is on {mask.device} but features are on {device}; use mask.to({device!r})"
            )
        # A data-dependent check forces a host sync and cannot be traced; skip it under
        # tracing/compilation, where masked_softmax still keeps empty rows NaN-free.
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            empty = (~mask.any(dim=1)).nonzero().flatten()
            if empty.numel():
                rows = empty[:10].tolist()
                raise ValueError(
                    f"mask rows {rows}{' ...' if empty.numel() > 10 else ''} have no modality "
                    f"present (columns {order}); there is nothing to fuse. Drop those samples "
                    f"before the model; ModalityDropout never empties a row"
                )
        return mask

    def _check_keys(self, given: Mapping[str, Any], what: str) -> None:
        missing = [m for m in self.modalities if m not in given]
        unknown = sorted(k for k in given if k not in self.input_dims)
        if missing:
            raise ValueError(
                f"{what} lacks modality(ies) {missing}; this fusion was built for "
                f"{list(self.modalities)}. For an absent modality pass zeros of shape "
                f"B×D_m and set its mask column to False"
            )
        if unknown:
            raise ValueError(
                f"{what} has unknown modality(ies) {unknown}; this fusion was built for "
                f"{list(self.modalities)}. Drop them, or rebuild with them in input_dims"
            )


def _token_methods() -> list[str]:
    return [n for n in available() if FUSIONS.get(n).uses_tokens]


def check_positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _check_input_dims(input_dims: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(input_dims, Mapping) or not input_dims:
        raise ValueError(
            f"input_dims must be a non-empty dict {{modality: feature dim}}, got {input_dims!r}"
        )
    for m, d in input_dims.items():
        # ModuleDict keys cannot hold '.', and every method keeps per-modality submodules.
        if not isinstance(m, str) or not m or "." in m:
            raise ValueError(f"modality names must be non-empty strings without '.', got {m!r}")
        check_positive_int(f"input_dims[{m!r}]", d)
    return {m: int(input_dims[m]) for m in sorted(input_dims)}


def per_modality_dims(what: str, value: int | Mapping[str, int], modalities: Sequence[str]):
    """Expand an int-or-{modality: int} option to one int per modality, in modality order."""
    if isinstance(value, Mapping):
        if sorted(value) != sorted(modalities):
            raise ValueError(
                f"{what} given per modality must have exactly the keys {list(modalities)}, "
                f"got {sorted(value)}; or pass one int for all"
            )
        return [check_positive_int(f"{what}[{m!r}]", value[m]) for m in modalities]
    return [check_positive_int(what, value)] * len(modalities)


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax over present entries only; missing entries get exactly 0.

    `mask` must broadcast to `scores`. The result passes through `torch.where` twice so that an
    all-missing slice gives zeros rather than NaN (only reachable when the empty-row check is
    skipped under tracing).
    """
    scores = torch.where(mask, scores, -math.inf)
    weights = torch.softmax(scores, dim=dim)
    return torch.where(mask, weights, 0.0)


def stack_projections(projections: nn.ModuleDict, modalities: Sequence[str], xs: list[Tensor]):
    """Apply each modality's projection and stack the results: list of B×D_m → B×M×P."""
    return torch.stack([projections[m](x) for m, x in zip(modalities, xs)], dim=1)


def check_probability(what: str, value: float, *, upper_inclusive: bool = False) -> float:
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        bound = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{what} must be in {bound}, got {value!r}")
    return float(value)
