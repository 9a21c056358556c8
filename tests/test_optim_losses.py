"""Optimizer groups, lr schedules and losses: exact values against torch and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from mmfuse.train.losses import (
    IGNORE_INDEX,
    balanced_class_weights,
    mix,
    mixup_loss,
    mixup_pairs,
    multitask_loss,
    task_loss,
)
from mmfuse.train.optim import build_optimizer, build_scheduler, fusable, param_groups


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
    model.head = nn.Linear(8, 3)
    return model


def groups_of(model: nn.Module, weight_decay: float = 0.05) -> list[dict]:
    return param_groups(
        {
            "backbone": (model.encoder.named_parameters(), 1e-4),
            "head": (model.head.named_parameters(), 1e-2),
        },
        weight_decay,
    )


def sched(schedule: str = "cosine", **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=1.0)
    return build_scheduler(opt, schedule=schedule, **kwargs)


def lrs_per_step(scheduler, n: int) -> list[list[float]]:
    """The lr of every group used by each of the next `n` optimizer steps."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def multipliers(scheduler, n: int) -> list[float]:
    """The multiplier of each of the first `n` optimizer steps (the base lr is 1.0)."""
    return [lrs[0] for lrs in lrs_per_step(scheduler, n)]


# --------------------------------------------------------------------------- param groups


def test_param_groups_split_decay_and_no_decay():
    groups = {g["name"]: g for g in groups_of(tiny_model())}
    assert list(groups) == ["backbone", "backbone/no_decay", "head", "head/no_decay"]
    # backbone: 2 Linear weights decayed; 2 Linear biases + LayerNorm weight and bias not.
    assert [len(groups[n]["params"]) for n in groups] == [2, 4, 1, 1]
    assert all(p.ndim == 2 for p in groups["backbone"]["params"])
    assert all(p.ndim == 1 for p in groups["backbone/no_decay"]["params"])
    assert [g["weight_decay"] for g in groups.values()] == [0.05, 0.0, 0.05, 0.0]
    assert [g["lr"] for g in groups.values()] == [1e-4, 1e-4, 1e-2, 1e-2]


def test_param_groups_skip_empty_groups():
    groups = param_groups({"bias_only": ([("b", nn.Parameter(torch.zeros(3)))], 0.1)}, 0.1)
    assert [g["name"] for g in groups] == ["bias_only/no_decay"]


def test_param_groups_keep_frozen_params():
    model = tiny_model()
    model.encoder.requires_grad_(False)
    groups = groups_of(model)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_param_groups_reject_a_parameter_listed_twice():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"head/weight .* backbone/weight"):
        param_groups(
            {
                "backbone": (model.head.named_parameters(), 1e-4),
                "head": (model.head.named_parameters(), 1e-2),
            },
            0.01,
        )


def test_param_groups_reject_negative_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        groups_of(tiny_model(), weight_decay=-1.0)


# --------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize(("name", "cls"), [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_build_optimizer_keeps_group_lrs(name, cls):
    opt = build_optimizer(groups_of(tiny_model()), name, lr=1.0)
    assert type(opt) is cls
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {
        "backbone": 1e-4,
        "backbone/no_decay": 1e-4,
        "head": 1e-2,
        "head/no_decay": 1e-2,
    }
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0, 0.05, 0.0]
    if name == "sgd":
        assert opt.defaults["momentum"] == 0.9 and not opt.defaults["nesterov"]


def test_frozen_params_are_not_updated_until_unfrozen():
    model = tiny_model()
    model.encoder.requires_grad_(False)
    opt = build_optimizer(groups_of(model), "adamw", lr=1e-3)
    before = model.encoder[0].weight.detach().clone()
    model.head(model.encoder(torch.randn(2, 4))).sum().backward()
    opt.step()
    assert torch.equal(model.encoder[0].weight, before)
    model.encoder.requires_grad_(True)
    opt.zero_grad()
    model.head(model.encoder(torch.randn(2, 4))).sum().backward()
    opt.step()
    assert not torch.equal(model.encoder[0].weight, before)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_fused_update_is_the_per_tensor_one(name):
    """The fused kernel takes the groups' own lr and weight decay, as the loop does."""
    fused, looped = tiny_model(), tiny_model()
    opt = build_optimizer(groups_of(fused), name, lr=1.0)
    assert opt.defaults["fused"] is True
    plain = build_optimizer(groups_of(looped), name, lr=1.0)
    for group in plain.param_groups:
        group["fused"] = False  # the per-tensor update, as before fusing
    for step in range(5):
        for model, optimizer in ((fused, opt), (looped, plain)):
            optimizer.zero_grad()
            torch.manual_seed(step)
            x = torch.randn(6, 4)
            model.head(model.encoder(x)).square().mean().backward()
            optimizer.step()
    for a, b in zip(fused.parameters(), looped.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    start = tiny_model()
    assert not torch.equal(next(fused.parameters()), next(start.parameters()))


def test_parameters_the_fused_kernels_do_not_take_get_the_loop():
    float32 = nn.Parameter(torch.zeros(3))
    assert fusable([{"params": [float32]}])
    on_meta = nn.Parameter(torch.zeros(3, device="meta"))
    assert not fusable([{"params": [float32]}, {"params": [on_meta]}])
    assert not fusable([{"params": [on_meta]}])
    integer = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)
    assert not fusable([{"params": [float32, integer]}])
    assert not fusable([])
    assert build_optimizer([{"params": [on_meta]}], "adamw", lr=1e-3).defaults["fused"] is False


def test_build_optimizer_unknown_name_names_the_field():
    with pytest.raises(ValueError, match=r"`optimizer`.*adamw"):
        build_optimizer(groups_of(tiny_model()), "adam", lr=1e-3)


# --------------------------------------------------------------------------- schedules


def test_warmup_ramp_then_constant():
    assert multipliers(sched("constant", total_steps=10, warmup_steps=3), 6) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    )


def test_cosine_endpoints_and_midpoint():
    got = multipliers(sched("cosine", total_steps=12, warmup_steps=2, min_lr_ratio=0.1), 14)
    assert got[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert got[7] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the 10 decay steps
    assert got[12] == pytest.approx(0.1)  # at total_steps
    assert got[13] == pytest.approx(0.1)  # clamped past the end
    assert got[2:13] == sorted(got[2:13], reverse=True)


def test_cosine_without_warmup_starts_at_full_lr():
    got = multipliers(sched("cosine", total_steps=4), 5)
    assert got == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, got[3], 0.0])


def test_step_decay():
    got = multipliers(sched("step", total_steps=20, warmup_steps=1, step_size=3, gamma=0.5), 8)
    assert got == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25])


def test_scheduler_sets_lr_per_group():
    opt = build_optimizer(groups_of(tiny_model()), "sgd", lr=1.0)
    scheduler = build_scheduler(opt, schedule="constant", total_steps=10, warmup_steps=1)
    assert scheduler.get_last_lr() == pytest.approx([5e-5, 5e-5, 5e-3, 5e-3])


def test_scheduler_state_dict_round_trip():
    def build():
        opt = build_optimizer(groups_of(tiny_model()), "adamw", lr=1e-3)
        return build_scheduler(opt, schedule="cosine", total_steps=20, warmup_steps=4)

    first = build()
    lrs_per_step(first, 7)
    state = {"opt": first.optimizer.state_dict(), "sched": first.state_dict()}
    expected = lrs_per_step(first, 6)

    resumed = build()
    resumed.optimizer.load_state_dict(state["opt"])
    resumed.load_state_dict(state["sched"])
    assert lrs_per_step(resumed, 6) == expected
    assert expected[0] != lrs_per_step(build(), 1)[0]  # a fresh scheduler would restart warm-up
    assert resumed.last_epoch == first.last_epoch


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "linear"}, "`schedule`"),
        ({"total_steps": 0}, "total_steps"),
        ({"warmup_steps": -1}, "`warmup_epochs`"),
        ({"step_size": 0}, "step_size"),
        ({"gamma": 0.0}, r"gamma .*\(0, 1\]"),
        ({"gamma": 1.5}, "gamma"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio .*\[0, 1\]"),
    ],
)
def test_scheduler_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sched(**{"total_steps": 10, **kwargs})


# --------------------------------------------------------------------------- class weights


def test_balanced_class_weights_match_sklearn():
    y = np.array([0, 0, 0, 1, 2, 2, 1, 0])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    got = balanced_class_weights(torch.from_numpy(y), 3)
    assert got.dtype == torch.float32
    assert got.numpy() == pytest.approx(expected)
    assert balanced_class_weights(y, 3).numpy() == pytest.approx(expected)


def test_balanced_class_weights_ignore_missing_and_absent_classes():
    y = np.array([0, 0, 1, IGNORE_INDEX, 1, 1, IGNORE_INDEX])
    present = compute_class_weight("balanced", classes=np.arange(2), y=y[y != IGNORE_INDEX])
    got = balanced_class_weights(y, 4)
    # With 4 classes the denominator uses 4, as sklearn would if classes 2 and 3 were present.
    assert got[:2].numpy() == pytest.approx(present * 2 / 4)
    assert got[2:].tolist() == [1.0, 1.0]


def test_balanced_class_weights_reject_out_of_range_labels():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        balanced_class_weights(np.array([0, 3]), 3)


# --------------------------------------------------------------------------- task losses


def labelled_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g, requires_grad=True)
    target = torch.tensor([0, IGNORE_INDEX, 2, 1, IGNORE_INDEX, 2])
    return logits, target


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weight", [None, torch.tensor([0.5, 2.0, 1.0])])
def test_task_loss_equals_cross_entropy_on_labelled_rows(weight, smoothing):
    logits, target = labelled_batch()
    keep = target != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], target[keep], weight=weight, label_smoothing=smoothing)
    got = task_loss(logits, target, weight=weight, label_smoothing=smoothing)
    assert got is not None
    torch.testing.assert_close(got, expected)


def test_task_loss_none_when_nothing_labelled():
    logits, _ = labelled_batch()
    assert task_loss(logits, torch.full((6,), IGNORE_INDEX)) is None


def test_task_loss_rejects_bad_smoothing_and_soft_targets():
    logits, target = labelled_batch()
    with pytest.raises(ValueError, match="`label_smoothing`"):
        task_loss(logits, target, label_smoothing=1.0)
    with pytest.raises(TypeError, match="integer"):
        task_loss(logits, torch.rand(6, 3))


def test_multitask_loss_is_the_weighted_sum():
    logits_a, target_a = labelled_batch()
    logits_b = torch.randn(6, 2, requires_grad=True)
    target_b = torch.tensor([1, 0, 1, 1, 0, IGNORE_INDEX])
    cw = torch.tensor([1.0, 3.0])
    total, parts = multitask_loss(
        {"a": logits_a, "b": logits_b},
        {"a": target_a, "b": target_b},
        task_weights={"b": 0.5},
        class_weights={"b": cw},
    )
    loss_a = task_loss(logits_a, target_a)
    loss_b = task_loss(logits_b, target_b, weight=cw)
    torch.testing.assert_close(total, loss_a + 0.5 * loss_b)
    assert parts == pytest.approx({"a": loss_a.item(), "b": loss_b.item()})


def test_multitask_loss_skips_unlabelled_task():
    logits_a, target_a = labelled_batch()
    logits_b = torch.randn(6, 2, requires_grad=True)
    total, parts = multitask_loss(
        {"a": logits_a, "b": logits_b},
        {"a": target_a, "b": torch.full((6,), IGNORE_INDEX)},
    )
    assert set(parts) == {"a"}
    torch.testing.assert_close(total, task_loss(logits_a, target_a))


def test_multitask_loss_with_no_labels_is_a_zero_that_backpropagates():
    logits = {
        "a": torch.randn(4, 3, requires_grad=True),
        "b": torch.randn(4, 2, requires_grad=True),
    }
    missing = {task: torch.full((4,), IGNORE_INDEX) for task in logits}
    total, parts = multitask_loss(logits, missing)
    assert parts == {} and total.item() == 0.0 and total.requires_grad
    total.backward()
    assert all(torch.equal(out.grad, torch.zeros_like(out)) for out in logits.values())


def test_multitask_loss_rejects_mismatched_tasks():
    logits, target = labelled_batch()
    with pytest.raises(ValueError, match="targets have"):
        multitask_loss({"a": logits}, {"b": target})
    with pytest.raises(ValueError, match="`task_weights`"):
        multitask_loss({"a": logits}, {"a": target}, task_weights={"c": 2.0})


# --------------------------------------------------------------------------- mixup


def test_mixup_pairs_are_reproducible_with_a_seeded_generator():
    draws = [mixup_pairs(16, 0.4, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1] == draws[1][1]
    perm, _ = draws[0]
    assert perm.dtype == torch.long and sorted(perm.tolist()) == list(range(16))
    g = torch.Generator().manual_seed(0)
    lams = [mixup_pairs(4, 0.2, g)[1] for _ in range(200)]
    assert all(0.5 <= lam <= 1.0 for lam in lams)
    assert len(set(lams)) > 100  # a fresh draw each call


def test_mixup_pairs_reject_non_positive_alpha():
    with pytest.raises(ValueError, match="`mixup_alpha`"):
        mixup_pairs(4, 0.0)


def test_mix_math_and_integer_rejection():
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(mix(x, perm, 0.7), 0.7 * x + 0.3 * x[perm])
    torch.testing.assert_close(mix(x, perm, 0.7)[0], 0.7 * x[0] + 0.3 * x[2])
    with pytest.raises(TypeError, match="floating-point"):
        mix(torch.arange(4), perm, 0.7)


def test_mixup_loss_equals_manual_combination():
    logits_a, target_a = labelled_batch()
    logits_b = torch.randn(6, 2, requires_grad=True)
    logits = {"a": logits_a, "b": logits_b}
    targets = {"a": target_a, "b": torch.tensor([1, 0, 1, 1, 0, IGNORE_INDEX])}
    perm, lam = mixup_pairs(6, 0.4, torch.Generator().manual_seed(3))

    def loss_fn(t):
        return multitask_loss(logits, t, task_weights={"a": 2.0})

    total, parts = mixup_loss(loss_fn, targets, perm, lam)
    total_a, parts_a = loss_fn(targets)
    total_b, parts_b = loss_fn({task: y[perm] for task, y in targets.items()})
    torch.testing.assert_close(total, lam * total_a + (1 - lam) * total_b)
    assert parts == pytest.approx({t: lam * parts_a[t] + (1 - lam) * parts_b[t] for t in parts_a})
    total.backward()
    assert logits_a.grad is not None and logits_b.grad is not None
