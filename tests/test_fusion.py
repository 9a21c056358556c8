"""Contract and reference tests for `mmfuse.fusion`: every registered method, every mask subset."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

from mmfuse import fusion
from mmfuse.fusion import (
    FUSIONS,
    LowRankFusion,
    ModalityDropout,
    TensorFusion,
    build,
    drop_modalities,
)

DIMS = {"text": 3, "audio": 5, "image": 7}  # deliberately unsorted: order must come from names
ORDER = ("audio", "image", "text")
OUT = 6
# Small options so the whole file runs in seconds; defaults are covered by test_default_options.
SMALL = {
    "concat": {"proj_dim": 8},
    "multichannel": {"branch_dim": 8, "channels": 2},
    "tensor": {"proj_dim": 3},
    "lowrank": {"proj_dim": 4, "rank": 3},
    "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 2, "ff_dim": 16, "dropout": 0.0},
    "late": {"combine": "weighted", "hidden_dim": 4},
}
METHODS = fusion.available()
# `late` has weights unless combine="stack"; SMALL builds it with combine="weighted".
WEIGHTED_METHODS = [m for m in METHODS if FUSIONS.get(m).has_weights]
# Every non-empty subset of the three modalities, one per row: B = 7.
SUBSETS = torch.tensor(
    [bits for bits in itertools.product([False, True], repeat=3) if any(bits)], dtype=torch.bool
)


def make(name: str, output_dim: int = OUT, seed: int = 0, **options) -> fusion.Fusion:
    torch.manual_seed(seed)
    module = build(name, DIMS, output_dim, **{**SMALL.get(name, {}), **options})
    # Make learned queries/weights non-trivial so weight tests are not passed by uniform init.
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if pname in ("query", "logits", "logit_weights"):
                p.normal_()
    return module.eval()


def features(batch: int, seed: int = 1, fill=None, mask=None) -> dict[str, torch.Tensor]:
    """Random B×D_m features; where `mask` is False the slot is set to `fill` if given."""
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(batch, d, generator=g) for m, d in DIMS.items()}
    if fill is not None:
        for j, m in enumerate(ORDER):
            missing = ~mask[:, j]
            feats[m][missing] = fill(feats[m][missing])
    return feats


GARBAGE = {
    "random": lambda x: torch.randn_like(x) * 3,
    "huge": lambda x: torch.full_like(x, 1e30),
    "nan": lambda x: torch.full_like(x, math.nan),
    "inf": lambda x: torch.full_like(x, -math.inf),
}


def test_available_lists_every_method():
    expected = (
        "attention concat gated late lowrank max multichannel sum tensor transformer weighted"
    )
    assert fusion.available() == expected.split()


@pytest.mark.parametrize("name", METHODS)
def test_default_options_build_and_run(name):
    module = build(name, DIMS, OUT).eval()
    assert module.modalities == ORDER
    assert module.output_dim == OUT
    out = module(features(4))
    assert out.shape == (4, OUT) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", METHODS)
def test_shape_for_every_subset_of_modalities(name):
    out = make(name)(features(len(SUBSETS)), SUBSETS)
    assert out.shape == (len(SUBSETS), OUT)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", METHODS)
def test_mask_none_means_all_present(name):
    module, x = make(name), features(3)
    torch.testing.assert_close(module(x), module(x, torch.ones(3, 3, dtype=torch.bool)))


@pytest.mark.parametrize("garbage", list(GARBAGE))
@pytest.mark.parametrize("name", METHODS)
def test_masked_inputs_do_not_change_output(name, garbage):
    module = make(name)
    clean = module(features(len(SUBSETS), fill=torch.zeros_like, mask=SUBSETS), SUBSETS)
    dirty = module(features(len(SUBSETS), fill=GARBAGE[garbage], mask=SUBSETS), SUBSETS)
    assert torch.equal(clean, dirty)


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_present_inputs_only(name):
    # output_dim 32 so that with `max` every present modality wins some feature of every row.
    module = make(name, output_dim=32).train()
    x = features(len(SUBSETS), fill=GARBAGE["nan"], mask=SUBSETS)
    for t in x.values():
        t.requires_grad_(True)
    out = module(x, SUBSETS)
    (out * torch.randn_like(out)).sum().backward()
    for j, m in enumerate(ORDER):
        grad_norm = x[m].grad.norm(dim=1)  # B
        assert torch.isfinite(x[m].grad).all()
        assert (grad_norm[SUBSETS[:, j]] > 0).all(), f"{m}: no gradient to a present row"
        assert (grad_norm[~SUBSETS[:, j]] == 0).all(), f"{m}: gradient leaked to a missing row"


@pytest.mark.parametrize("name", METHODS)
def test_every_parameter_gets_a_gradient(name):
    module = make(name).train()
    out = module(features(len(SUBSETS)), SUBSETS)
    (out * torch.randn_like(out)).sum().backward()
    dead = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not dead, f"parameters unused by forward: {dead}"


@pytest.mark.parametrize("name", METHODS)
def test_rows_are_independent(name):
    module, x = make(name), features(len(SUBSETS))
    batched = module(x, SUBSETS)
    for b in range(len(SUBSETS)):
        row = module({m: t[b : b + 1] for m, t in x.items()}, SUBSETS[b : b + 1])
        torch.testing.assert_close(row, batched[b : b + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", WEIGHTED_METHODS)
def test_weights_sum_to_one_over_present_and_zero_on_missing(name):
    module = make(name)
    _, w = module(features(len(SUBSETS)), SUBSETS, return_weights=True)
    assert w.shape == (len(SUBSETS), 3)
    assert (w[~SUBSETS] == 0).all()
    assert (w[SUBSETS] > 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(len(SUBSETS)))
    torch.testing.assert_close(module.last_weights, w.detach())
    assert not module.last_weights.requires_grad


def test_attention_weights_depend_on_the_sample():
    module = make("attention")
    _, w = module(features(16), return_weights=True)
    assert w.std(dim=0).max() > 1e-3


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(WEIGHTED_METHODS)))
def test_return_weights_without_weights_says_which_methods_have_them(name):
    module = make(name, combine="stack") if name == "late" else make(name)
    with pytest.raises(ValueError, match="attention"):
        module(features(2), return_weights=True)


@pytest.mark.parametrize("name", [m for m in METHODS if m != "transformer"])
def test_tokens_are_refused_by_vector_methods(name):
    with pytest.raises(ValueError, match="transformer"):
        make(name)(features(2), tokens={"text": torch.randn(2, 4, 3)})


# --- reference computations ------------------------------------------------------------------


def test_sum_is_mean_of_present_projections():
    module = make("sum")
    x = features(len(SUBSETS))
    h = torch.stack([module.projections[m](x[m]) for m in ORDER], dim=1)  # B×M×D
    expected = (h * SUBSETS[:, :, None]).sum(1) / SUBSETS.sum(1, keepdim=True)
    torch.testing.assert_close(module(x, SUBSETS), expected)
    assert not any(p is module.logits for p in module.parameters())


def test_weighted_renormalises_learned_weights_over_present():
    module = make("weighted")
    with torch.no_grad():
        module.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(module.weights, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0))
    x = features(len(SUBSETS))
    h = torch.stack([module.projections[m](x[m]) for m in ORDER], dim=1)  # B×M×D
    e = torch.exp(torch.tensor([0.0, 1.0, 2.0])) * SUBSETS  # B×M
    expected = torch.einsum("bm,bmd->bd", e / e.sum(1, keepdim=True), h)
    torch.testing.assert_close(module(x, SUBSETS), expected)


def test_max_is_elementwise_max_of_present_projections():
    module = make("max")
    x = features(len(SUBSETS))
    rows = []
    for b in range(len(SUBSETS)):
        present = [module.projections[m](x[m][b]) for j, m in enumerate(ORDER) if SUBSETS[b, j]]
        rows.append(torch.stack(present).amax(0))
    torch.testing.assert_close(module(x, SUBSETS), torch.stack(rows))


def test_late_mean_averages_present_heads_and_is_decision_level():
    module = make("late", combine="mean")
    assert module.is_decision_level
    assert not any(FUSIONS.get(m).is_decision_level for m in METHODS if m != "late")
    x = features(len(SUBSETS))
    logits = module.modality_logits(x, SUBSETS)  # B×M×C
    assert (logits[~SUBSETS] == 0).all()
    expected = logits.sum(1) / SUBSETS.sum(1, keepdim=True)
    torch.testing.assert_close(module(x, SUBSETS), expected)


def test_late_stack_sees_which_modalities_are_missing():
    module = make("late", combine="stack")
    s = module.modality_logits(features(len(SUBSETS)), SUBSETS)
    expected = module.stacker(torch.cat([s.flatten(1), SUBSETS.float()], dim=1))
    torch.testing.assert_close(module(features(len(SUBSETS)), SUBSETS), expected)


@pytest.mark.parametrize("learned", [True, False])
def test_concat_fills_missing_slot_with_missing_embedding_or_zeros(learned):
    module = make("concat", missing_embedding=learned)
    if learned:
        with torch.no_grad():
            module.missing.normal_()
    x = features(len(SUBSETS))
    slots = []
    for j, m in enumerate(ORDER):
        h = module.projections[m](x[m])  # B×P
        fill = module.missing[j] if learned else torch.zeros_like(h[0])
        slots.append(torch.where(SUBSETS[:, j, None], h, fill))
    torch.testing.assert_close(module(x, SUBSETS), module.out(torch.cat(slots, dim=1)))
    assert ("missing" in dict(module.named_parameters())) == learned


def tensor_reference(module: TensorFusion, x, mask) -> torch.Tensor:
    """Tensor fusion written plainly: z_m = [h_m, 1] (or [0..0, 1]), outer product, linear."""
    zs = []
    for j, m in enumerate(ORDER):
        h = module.projections[m](x[m]) * mask[:, j, None]
        zs.append(torch.cat([h, torch.ones(len(h), 1)], dim=1))
    outer = torch.einsum("bi,bj,bk->bijk", *zs).flatten(1)  # B×Π(P_m+1)
    kron = torch.stack([torch.kron(torch.kron(a, b), c) for a, b, c in zip(*zs)])
    torch.testing.assert_close(outer, kron)
    return outer @ module.out.weight.T + module.out.bias


@pytest.mark.parametrize("proj_dim", [3, {"audio": 2, "image": 4, "text": 1}])
def test_tensor_matches_plain_outer_product(proj_dim):
    module = make("tensor", proj_dim=proj_dim)
    x = features(len(SUBSETS))
    torch.testing.assert_close(module(x, SUBSETS), tensor_reference(module, x, SUBSETS))


def test_tensor_missing_modality_reduces_to_the_others_interactions():
    # With text missing, z_text = [0, ..., 0, 1] selects the weights of the text-constant slice.
    module = make("tensor", proj_dim=2)
    mask = torch.tensor([[True, True, False]])
    x = features(1)
    w = module.out.weight.view(OUT, 3, 3, 3)[..., -1]  # D×P_a×P_i: the text "1" slice
    za, zi = (torch.cat([module.projections[m](x[m]), torch.ones(1, 1)], 1) for m in ORDER[:2])
    expected = torch.einsum("dij,bi,bj->bd", w, za, zi) + module.out.bias
    torch.testing.assert_close(module(x, mask), expected)


def test_tensor_refuses_intractable_product():
    with pytest.raises(ValueError, match="lowrank"):
        build("tensor", {"a": 4, "b": 4, "c": 4}, 2, proj_dim=128)


def test_lowrank_with_full_rank_reproduces_tensor_fusion():
    """Exact CP construction: rank r ↔ an index pair (i_audio, i_image); the first two factors
    select that pair, the last carries the tensor weight slice W[:, i_a, i_i, :], so
    Σ_r Π_m (z_m · W_m^(r)) = Σ_{i,j,k} W[:, i, j, k] z_a[i] z_i[j] z_t[k] — tensor fusion."""
    tensor = make("tensor", proj_dim=2)
    sizes = [3, 3, 3]  # P_m + 1
    rank = sizes[0] * sizes[1]
    lowrank = make("lowrank", proj_dim=2, rank=rank)
    assert isinstance(lowrank, LowRankFusion)
    lowrank.projections.load_state_dict(tensor.projections.state_dict())
    w = tensor.out.weight.detach().view(OUT, *sizes)  # D×P_a×P_i×P_t
    with torch.no_grad():
        for f in lowrank.factors:
            f.zero_()
        for r, (i, j) in enumerate(itertools.product(range(sizes[0]), range(sizes[1]))):
            lowrank.factors[0][r, i, :] = 1.0
            lowrank.factors[1][r, j, :] = 1.0
            lowrank.factors[2][r] = w[:, i, j, :].T  # P_t×D
        lowrank.bias.copy_(tensor.out.bias)
    x = features(len(SUBSETS))
    torch.testing.assert_close(lowrank(x, SUBSETS), tensor(x, SUBSETS), rtol=1e-5, atol=1e-5)


def test_lowrank_rank_one_cannot_fit_a_generic_tensor_fusion():
    # The exact test above would also pass if lowrank ignored its rank; a rank-1 model fitted to
    # the same tensor fusion by least squares must be visibly worse than the rank-9 one.
    torch.manual_seed(0)
    tensor = make("tensor", proj_dim=2)
    x = features(256, seed=3)
    target = tensor(x).detach()

    def fit(rank: int) -> float:
        model = make("lowrank", proj_dim=2, rank=rank).train()
        model.projections.load_state_dict(tensor.projections.state_dict())
        model.projections.requires_grad_(False)
        opt = torch.optim.Adam([*model.factors, model.bias], lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), target)
            loss.backward()
            opt.step()
        return loss.item()

    assert fit(9) < 0.2 * fit(1)


# --- transformer tokens ----------------------------------------------------------------------


def token_inputs(batch: int, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    tokens = {"text": torch.randn(batch, 5, 3, generator=g), "image": torch.randn(batch, 4, 7)}
    token_mask = {"text": torch.rand(batch, 5, generator=g) > 0.4}
    token_mask["text"][:, 0] = True  # every present text keeps at least one real token
    return tokens, token_mask


def test_transformer_uses_tokens_and_ignores_padding_and_missing_tokens():
    module = make("transformer")
    x, (tokens, token_mask) = features(len(SUBSETS)), token_inputs(len(SUBSETS))
    out, w = module(x, SUBSETS, tokens=tokens, token_mask=token_mask, return_weights=True)
    assert out.shape == (len(SUBSETS), OUT)
    assert not torch.allclose(out, module(x, SUBSETS)), "tokens were ignored"
    torch.testing.assert_close(w.sum(1), torch.ones(len(SUBSETS)))
    assert (w[~SUBSETS] == 0).all()

    dirty = {m: t.clone() for m, t in tokens.items()}
    dirty["text"][~token_mask["text"]] = math.nan  # padding
    dirty["image"][~SUBSETS[:, 1]] = 1e30  # a missing modality's tokens
    dirty["text"][~SUBSETS[:, 2]] = -math.inf
    again = module(x, SUBSETS, tokens=dirty, token_mask=token_mask)
    assert torch.equal(out, again)


def test_transformer_no_gradient_to_padding_tokens():
    module = make("transformer").train()
    x, (tokens, token_mask) = features(len(SUBSETS)), token_inputs(len(SUBSETS))
    tokens["text"].requires_grad_(True)
    module(x, SUBSETS, tokens=tokens, token_mask=token_mask).sum().backward()
    valid = token_mask["text"] & SUBSETS[:, 2, None]  # B×T
    grad_norm = tokens["text"].grad.norm(dim=2)
    assert (grad_norm[~valid] == 0).all() and (grad_norm[valid] > 0).all()


@pytest.mark.parametrize(
    ("tokens", "token_mask", "match"),
    [
        ({"video": torch.randn(2, 3, 4)}, None, "unknown modality"),
        ({"text": torch.randn(2, 3, 4)}, None, r"2×T×3"),
        ({"text": torch.randn(2, 3, 3)}, {"text": torch.ones(2, 3)}, "bool"),
        ({"text": torch.randn(2, 3, 3)}, {"audio": torch.ones(2, 3, dtype=torch.bool)}, "without"),
    ],
)
def test_transformer_token_errors(tokens, token_mask, match):
    with pytest.raises(ValueError, match=match):
        make("transformer")(features(2), tokens=tokens, token_mask=token_mask)


# --- input checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda x, k: (x, k[:, :2]), ValueError, r"2×3 with columns \['audio', 'image', 'text'\]"),
        (lambda x, k: (x, k.float()), TypeError, r"mask\.bool\(\)"),
        (lambda x, k: ({"audio": x["audio"], "image": x["image"]}, k), ValueError, "lacks"),
        (lambda x, k: ({**x, "video": x["text"]}, k), ValueError, "unknown modality"),
        (lambda x, k: ({**x, "text": x["audio"]}, k), ValueError, r"B×3"),
        (lambda x, k: ({**x, "text": x["text"][:1]}, k), ValueError, "batch size"),
        (lambda x, k: (list(x.values()), k), TypeError, "dict"),
        (lambda x, k: (x, k & torch.tensor([[True], [False]])), ValueError, r"rows \[1\]"),
        (lambda x, k: (x, k.to("meta")), ValueError, "mask is on meta"),
    ],
)
def test_input_errors_are_explicit(change, error, match):
    x, mask = change(features(2), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(error, match=match):
        make("sum")(x, mask)


@pytest.mark.parametrize(
    ("dims", "out", "match"),
    [
        ({}, 4, "non-empty"),
        ({"a.b": 3}, 4, "without '.'"),
        ({"a": 0}, 4, r"input_dims\['a'\]"),
        ({"a": 3}, 0, "output_dim"),
    ],
)
def test_construction_errors(dims, out, match):
    with pytest.raises(ValueError, match=match):
        build("concat", dims, out)


# --- registry and config round-trip -------------------------------------------------------------


def test_duplicate_registration_is_an_error():
    before = fusion.available()
    with pytest.raises(ValueError, match="already registered"):
        fusion.register("concat")(type("Other", (fusion.Fusion,), {}))
    assert fusion.available() == before
    assert FUSIONS.get("concat") is fusion.ConcatFusion


def test_unknown_method_lists_valid_names():
    with pytest.raises(KeyError, match="valid names: attention, concat"):
        build("concatenate", DIMS, OUT)


def test_unknown_option_lists_valid_options():
    with pytest.raises(TypeError, match=r"valid options: \['proj_dim', 'rank'\]"):
        build("lowrank", DIMS, OUT, ranks=3)


@pytest.mark.parametrize("name", METHODS)
def test_config_round_trip_rebuilds_the_same_module(name):
    module = make(name)
    options = json.loads(json.dumps(module.config()))
    rebuilt = build(name, DIMS, OUT, **options)
    rebuilt.load_state_dict(module.state_dict())
    rebuilt.eval()
    x = features(len(SUBSETS))
    torch.testing.assert_close(rebuilt(x, SUBSETS), module(x, SUBSETS))
    spec = json.loads(json.dumps(module.spec()))
    assert spec["name"] == name
    from_spec = fusion.from_spec(spec)
    from_spec.load_state_dict(module.state_dict())
    torch.testing.assert_close(from_spec.eval()(x, SUBSETS), module(x, SUBSETS))


# --- modality dropout ------------------------------------------------------------------------


def random_masks(batch: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, m, generator=g) > 0.3


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 1.0])
def test_modality_dropout_keeps_one_present_and_only_drops(p):
    mask = random_masks(2000, 4, seed=0)
    dropped = drop_modalities(mask, p, torch.Generator().manual_seed(1))
    assert not (dropped & ~mask).any(), "revived a modality that was absent"
    assert (dropped.any(1) == mask.any(1)).all(), "emptied a row (or filled an empty one)"
    if p == 0.0:
        assert torch.equal(dropped, mask)
    if p == 1.0:
        assert (dropped.sum(1)[mask.any(1)] == 1).all()


def test_modality_dropout_rate_and_rescue_are_as_documented():
    # All 4 present, p = 0.5: kept with prob (1 - p) + p^4 / 4 (the rescue picks uniformly).
    mask = torch.ones(40000, 4, dtype=torch.bool)
    dropped = drop_modalities(mask, 0.5, torch.Generator().manual_seed(0))
    rate = dropped.float().mean(0)
    assert torch.allclose(rate, torch.full((4,), 0.5 + 0.5**4 / 4), atol=0.01)


def test_modality_dropout_is_reproducible_and_off_in_eval():
    mask = random_masks(64, 3, seed=0)
    layer = ModalityDropout(0.5).train()
    a = layer(mask, torch.Generator().manual_seed(7))
    b = layer(mask, torch.Generator().manual_seed(7))
    c = layer(mask, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert layer.eval()(mask, torch.Generator().manual_seed(7)) is mask


def test_modality_dropout_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ModalityDropout(1.5)
    with pytest.raises(ValueError, match="bool"):
        drop_modalities(torch.ones(2, 3), 0.5)


def test_modality_dropout_then_fusion_never_fails():
    mask = random_masks(32, 3, seed=0)
    mask[:, 0] = True  # every row has something to fuse
    dropped = ModalityDropout(0.9).train()(mask, torch.Generator().manual_seed(0))
    out = make("attention")(features(32), dropped)
    assert torch.isfinite(out).all()
