"""The encoder contract, the per-modality registries and `build`.

Every encoder is an `Encoder`: it maps one modality's batch to `B×D` (`forward`) and to a token
sequence `B×T×D` (`forward_tokens`, for attention/transformer fusion), says what input it expects
(`input_spec`, from which `mmfuse.features` builds the transform) and can describe itself as a
JSON-safe `config()` that `build(**config)` turns back into the same architecture.

Families register one small builder per variant with `@register(modality, name)`. A builder's
keyword arguments are its options; `build` fills in their defaults and records them, so a saved
config names every option even if a default changes later.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import json
import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

from mmfuse.errors import EncoderError
from mmfuse.features.spec import InputSpec
from mmfuse.registry import Registry

MODALITIES = ("audio", "categorical", "image", "numeric", "text", "video")

_REGISTRIES: dict[str, Registry] = {m: Registry(f"{m} encoder") for m in MODALITIES}

# `hf:<path-or-id>` names a Hugging Face model: the part after the colon is the `path` option.
HF_PREFIX = "hf:"

# True while a caller that loads every weight itself (a saved model folder) builds encoders.
_SKIP_PRETRAINED = contextvars.ContextVar("skip_pretrained", default=False)


class Encoder(nn.Module):
    """Base class for all encoders. Subclasses set the three attributes and the two forwards."""

    modality: str
    output_dim: int
    input_spec: InputSpec

    def __init__(self):
        super().__init__()
        self._frozen = False
        # Filled in by `build`; an encoder made directly from its class has no registered name.
        self._build_config: dict | None = None

    def forward(self, x) -> torch.Tensor:  # B×D
        raise NotImplementedError

    def forward_tokens(self, x) -> torch.Tensor:  # B×T×D
        raise NotImplementedError

    def freeze(self) -> Encoder:
        """Stop training this encoder: no gradients, and BatchNorm/dropout stay in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        return self.train(self.training)

    def unfreeze(self) -> Encoder:
        """Train this encoder again (fine-tuning after a frozen warm-up of the head)."""
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen = False
        return self

    @property
    def frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> Encoder:
        # A parent model calls .train() on all children each epoch; a frozen encoder must not
        # start updating BatchNorm running stats or applying dropout again.
        super().train(mode and not self._frozen)
        return self

    def config(self) -> dict:
        """JSON-safe `{"modality", "name", **options}`; `build(**config)` rebuilds the encoder."""
        if self._build_config is None:
            raise EncoderError(
                f"{type(self).__name__} was not made by mmfuse.encoders.build, so it has no "
                "registered name to save; build it with build(modality, name, **options)"
            )
        return copy.deepcopy(self._build_config)

    def extra_repr(self) -> str:
        return f"modality={self.modality!r}, output_dim={self.output_dim}"


# glibc serves an allocation above its mmap threshold (32 MiB at most) with a fresh mapping
# whose pages fault in one at a time and go back to the kernel when it is freed, so a CPU
# forward whose activations are larger than that spends more time faulting pages in than
# computing (docs/encoders.md, "Inference in slices"). Inference on a CPU therefore runs a
# large batch in slices whose largest activation stays under this.
SLICE_BYTES = 24 << 20
# oneDNN's CPU convolutions run faster on NHWC than on NCHW (docs/encoders.md), with float32
# results equal up to summation order; so eval-mode inference on a CPU computes B×C×H×W
# batches channels-last (False: as given, for comparison).
CPU_CHANNELS_LAST = True


def in_slices(module: nn.Module, fn: Callable, x: torch.Tensor, per_row: int) -> torch.Tensor:
    """`fn(x)` for a `B×…` batch, computed on slices of its rows when `module` is in eval mode
    on a CPU and one call's largest activation, `per_row` elements a row, would pass
    SLICE_BYTES. Eval-mode layers treat rows apart, so the result is the same. Training keeps
    one call (BatchNorm's batch statistics), and so do tracing and ONNX export, whose graph
    must not fix the batch size. A B×C×H×W batch is computed channels-last there."""
    if not inference_on_cpu(module, x):
        return fn(x)
    x = _cpu_layout(x)
    rows = max(1, SLICE_BYTES // max(1, per_row * activation_bytes(x)))
    out = fn(x) if x.shape[0] <= rows else torch.cat([fn(part) for part in x.split(rows)])
    return out.contiguous()


def inference_on_cpu(module: nn.Module, x: torch.Tensor) -> bool:
    """Eval mode on a CPU, neither traced nor exported: where `in_slices` may slice and
    reorder memory (training's batch statistics and a traced graph must see one call)."""
    return not (
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or module.training
        or x.device.type != "cpu"
    )


def in_cpu_layout(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` channels-last when it is a B×C×H×W batch for CPU inference (CPU_CHANNELS_LAST)."""
    return _cpu_layout(x) if inference_on_cpu(module, x) else x


def _cpu_layout(x: torch.Tensor) -> torch.Tensor:
    if CPU_CHANNELS_LAST and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def activation_bytes(x: torch.Tensor) -> int:
    """Bytes an element of the activations computed from `x` takes: 2 under CPU autocast to
    a 16-bit type, else `x`'s own."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu").itemsize
    return x.element_size()


def check_shape(x: torch.Tensor, expected: tuple, what: str) -> None:
    """Raise a ValueError naming expected vs got shape. `expected` holds ints or names (free)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor of shape {_fmt(expected)}, got {type(x)}")
    ok = x.ndim == len(expected) and all(
        not isinstance(e, int) or e == s for e, s in zip(expected, x.shape)
    )
    if not ok:
        raise EncoderError(
            f"{what}: expected input of shape {_fmt(expected)}, got {_fmt(tuple(x.shape))}; "
            "check that the transform was built from this encoder's input_spec"
        )


def _fmt(shape: tuple) -> str:
    return "×".join(str(s) for s in shape)


def register(modality: str, name: str) -> Callable:
    """Decorator: register a builder function as encoder `name` for `modality`."""
    return _registry(modality).register(name)


def _registry(modality: str) -> Registry:
    if modality not in _REGISTRIES:
        raise EncoderError(
            f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}"
        )
    return _REGISTRIES[modality]


def available() -> dict[str, list[str]]:
    """`{modality: [encoder names]}`; `hf` also accepts `hf:<path-or-id>`."""
    return {m: _REGISTRIES[m].names() for m in MODALITIES}


@contextlib.contextmanager
def without_pretrained_weights() -> Iterator[None]:
    """Within this block `build` passes `pretrained=False` to every builder that takes it,
    nested builds included (a `frames` video encoder's image encoder), while `config()` keeps the
    options as given. For rebuilding a saved model whose own weights file holds every weight: it
    loads without the packages that ship the pretrained weights, and reads no file twice."""
    token = _SKIP_PRETRAINED.set(True)
    try:
        yield
    finally:
        _SKIP_PRETRAINED.reset(token)


def option_names(modality: str, name: str) -> tuple[str, ...]:
    """The options encoder `name` for `modality` takes (`pretrained` among them: it loads
    pretrained weights); an unknown name raises as `build` does."""
    if name.startswith(HF_PREFIX):
        name = "hf"
    return tuple(inspect.signature(_builder(modality, name)).parameters)


def _builder(modality: str, name: str) -> Callable:
    registry = _registry(modality)
    if name not in registry:
        elsewhere = [m for m in MODALITIES if name in _REGISTRIES[m]]
        hint = f" ({name!r} is a {'/'.join(elsewhere)} encoder)" if elsewhere else ""
        raise EncoderError(
            f"unknown {modality} encoder {name!r}{hint}; valid {modality} encoders: "
            f"{', '.join(registry.names())} (or hf:<path-or-id>)"
        )
    return registry.get(name)


def build(modality: str, name: str, **options) -> Encoder:
    """Build encoder `name` for `modality`, e.g. `build("image", "resnet18", width=32)`.

    `name` may be `hf:<folder-or-hub-id>` for any Hugging Face model (same as `name="hf",
    path=...`). Unknown modalities, names or options raise a ValueError listing the valid ones.
    """
    if name.startswith(HF_PREFIX):
        if options.get("path") is not None:
            raise EncoderError(
                f"give the Hugging Face path once: either {name!r} or path=..., not both"
            )
        name, options = "hf", {**options, "path": name[len(HF_PREFIX) :]}
    builder = _builder(modality, name)
    signature = inspect.signature(builder)
    unknown = sorted(set(options) - set(signature.parameters))
    if unknown:
        raise EncoderError(
            f"unknown option(s) {unknown} for {modality} encoder {name!r}; "
            f"valid options: {', '.join(signature.parameters) or '(none)'}"
        )
    # Folders given as Path objects are stored as strings, so the config stays JSON-safe.
    options = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    bound = signature.bind(**options)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    if _SKIP_PRETRAINED.get() and "pretrained" in arguments:
        arguments["pretrained"] = False
    encoder = builder(**arguments)
    if encoder.modality != modality:
        raise EncoderError(f"builder {name!r} made a {encoder.modality} encoder, not {modality}")
    # The JSON round trip turns tuples into lists now, so config() equals what a saved file holds.
    try:
        options = json.loads(json.dumps(bound.arguments))
    except TypeError as e:
        raise EncoderError(
            f"options of {modality} encoder {name!r} must be JSON-safe: {e}"
        ) from None
    encoder._build_config = {"modality": modality, "name": name, **options}
    return encoder
