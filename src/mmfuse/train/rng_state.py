"""Every RNG a training step may draw from, captured as tensors, lists and dicts and put back.

The captured state is what `torch.load(weights_only=True)` can read back (a checkpoint never
unpickles arbitrary objects), so numpy's uint32 keys become int64 tensors and bit-generator
states become tagged lists.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def capture_rng_state(generators: Mapping[str, Any] | None = None) -> dict:
    """Every RNG a training step may draw from, as tensors/lists/dicts (weights_only-safe).

    Global: torch CPU, every CUDA device (when CUDA is available), numpy's legacy global
    `np.random` state and Python's `random`. `generators` adds named explicit generators
    (`torch.Generator` or `np.random.Generator`), e.g. the sampler's data-order generator.
    """
    legacy = np.random.get_state()
    # random.getstate() is (version, 625 ints < 2**32, gauss_next): lists pickle weights-only.
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "algorithm": legacy[0],
            # uint32 has no torch dtype; int64 holds it exactly.
            "keys": torch.from_numpy(legacy[1].astype(np.int64)),
            "pos": int(legacy[2]),
            "has_gauss": int(legacy[3]),
            "cached_gaussian": float(legacy[4]),
        },
        "python": [py_version, list(py_internal), py_gauss],
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            entry = {"kind": "torch", "device": str(gen.device), "state": gen.get_state()}
        elif isinstance(gen, np.random.Generator):
            entry = {"kind": "numpy", "state": _numpy_to_safe(gen.bit_generator.state)}
        else:
            raise TypeError(
                f"generators[{name!r}] is a {type(gen).__name__}; pass a torch.Generator "
                "or a numpy.random.Generator"
            )
        state["generators"][str(name)] = entry
    return state


def restore_rng_state(state: Mapping, generators: Mapping[str, Any] | None = None) -> None:
    """Put back what `capture_rng_state` returned; `generators` are set in place by name.

    CUDA states are restored when CUDA is available here (a CPU-only resume of a GPU run
    warns, since its CUDA draws cannot be replayed). A name in `generators` missing from
    `state` raises KeyError: silently leaving it unseeded would change the data order.
    """
    # .cpu(): load_checkpoint(map_location="cuda") moves these too, but RNG setters want CPU.
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = list(state.get("cuda", []))
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
    elif cuda_states:
        warnings.warn(
            "the checkpoint holds CUDA RNG states but CUDA is not available: not restored",
            stacklevel=2,
        )
    legacy = state["numpy"]
    np.random.set_state(
        (
            legacy["algorithm"],
            legacy["keys"].cpu().numpy().astype(np.uint32),
            legacy["pos"],
            legacy["has_gauss"],
            legacy["cached_gaussian"],
        )
    )
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise KeyError(
                f"no state for generator {name!r}; the checkpoint has {sorted(saved) or 'none'}"
            )
        entry = saved[name]
        if isinstance(gen, torch.Generator) and entry["kind"] == "torch":
            gen.set_state(entry["state"].cpu())
        elif isinstance(gen, np.random.Generator) and entry["kind"] == "numpy":
            gen.bit_generator.state = _numpy_from_safe(entry["state"])
        else:
            raise TypeError(
                f"generator {name!r} is a {type(gen).__name__} but was saved as a "
                f"{entry['kind']} generator"
            )


def _numpy_to_safe(value):
    # Bit-generator states nest dicts, big ints and uint64 arrays; arrays become tagged lists.
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, dict):
        return {key: _numpy_to_safe(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _numpy_from_safe(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if isinstance(value, dict):
        return {key: _numpy_from_safe(item) for key, item in value.items()}
    return value
