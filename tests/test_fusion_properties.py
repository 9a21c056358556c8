"""Property tests: random modality sets, dims, batches and masks for every fusion method."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse import fusion
from mmfuse.fusion import drop_modalities

# Small options keep each example in milliseconds; shapes, not capacity, are under test.
SMALL = {
    "concat": {"proj_dim": 4},
    "multichannel": {"branch_dim": 4, "channels": 2},
    "tensor": {"proj_dim": 2},
    "lowrank": {"proj_dim": 3, "rank": 2},
    "transformer": {"d_model": 8, "num_heads": 2, "num_layers": 1, "ff_dim": 8, "dropout": 0.0},
}
NAMES = ["audio", "depth", "image", "text", "video"]
SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def cases(draw):
    """A method, {modality: dim}, output dim, and a B×M mask with at least one True per row."""
    method = draw(st.sampled_from(fusion.available()))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    dims = {n: draw(st.integers(1, 6)) for n in names}
    output_dim = draw(st.integers(1, 5))
    batch = draw(st.integers(1, 5))
    rows = st.lists(st.booleans(), min_size=len(names), max_size=len(names)).filter(any)
    mask = torch.tensor(draw(st.lists(rows, min_size=batch, max_size=batch)), dtype=torch.bool)
    seed = draw(st.integers(0, 2**16))
    return method, dims, output_dim, mask, seed


def inputs(dims, batch, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g) * scale for m, d in sorted(dims.items())}


@SETTINGS
@given(cases())
def test_output_shape_finite_and_independent_of_masked_values(case):
    method, dims, output_dim, mask, seed = case
    torch.manual_seed(seed)
    module = fusion.build(method, dims, output_dim, **SMALL.get(method, {})).eval()
    assert module.modalities == tuple(sorted(dims))
    batch = mask.shape[0]
    x = inputs(dims, batch, seed)
    out = module(x, mask)
    assert out.shape == (batch, output_dim)
    assert torch.isfinite(out).all()

    # Overwrite every masked slot with large random values: the output must not move at all.
    noise = inputs(dims, batch, seed + 1, scale=1e6)
    dirty = {
        m: torch.where(mask[:, j, None], x[m], noise[m]) for j, m in enumerate(module.modalities)
    }
    assert torch.equal(module(dirty, mask), out)


@SETTINGS
@given(cases())
def test_gradients_reach_present_inputs_and_never_masked_ones(case):
    method, dims, output_dim, mask, seed = case
    torch.manual_seed(seed)
    module = fusion.build(method, dims, output_dim, **SMALL.get(method, {})).train()
    x = inputs(dims, mask.shape[0], seed)
    for t in x.values():
        t.requires_grad_(True)
    out = module(x, mask)
    (out * torch.randn_like(out)).sum().backward()
    for j, m in enumerate(module.modalities):
        grad = x[m].grad
        assert torch.isfinite(grad).all()
        assert (grad[~mask[:, j]] == 0).all()
        # `max` legitimately sends nothing to a modality that wins no feature.
        if method != "max" and mask[:, j].any():
            assert grad[mask[:, j]].abs().sum() > 0


@SETTINGS
@given(cases())
def test_weights_are_a_distribution_over_present_modalities(case):
    method, dims, output_dim, mask, seed = case
    torch.manual_seed(seed)
    module = fusion.build(method, dims, output_dim, **SMALL.get(method, {})).eval()
    if not module.has_weights:
        return
    _, w = module(inputs(dims, mask.shape[0], seed), mask, return_weights=True)
    assert (w[~mask] == 0).all()
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(mask.shape[0]))


@SETTINGS
@given(cases())
def test_config_round_trip(case):
    method, dims, output_dim, mask, seed = case
    torch.manual_seed(seed)
    module = fusion.build(method, dims, output_dim, **SMALL.get(method, {})).eval()
    rebuilt = fusion.build(method, dims, output_dim, **module.config())
    rebuilt.load_state_dict(module.state_dict())
    x = inputs(dims, mask.shape[0], seed)
    assert torch.equal(rebuilt.eval()(x, mask), module(x, mask))


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 50),
    m=st.integers(1, 6),
    p=st.floats(0.0, 1.0),
    present=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_modality_dropout_never_empties_a_row_and_is_reproducible(batch, m, p, present, seed):
    mask = torch.rand(batch, m, generator=torch.Generator().manual_seed(seed)) < present
    dropped = drop_modalities(mask, p, torch.Generator().manual_seed(seed))
    assert not (dropped & ~mask).any()
    assert torch.equal(dropped.any(dim=1), mask.any(dim=1))
    assert torch.equal(dropped, drop_modalities(mask, p, torch.Generator().manual_seed(seed)))
