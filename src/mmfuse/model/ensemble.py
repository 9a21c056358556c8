"""`EnsembleModel`: several trained `MultimodalModel`s whose probabilities are averaged.

It keeps `MultimodalModel`'s contract (`names`, `encoders`, `tasks`, `encode`, `classify`,
`forward` → `{task: B×C logits}`), so the one prediction path (`infer.engine`), and through it
evaluation, the service, batch prediction and the ONNX export, take it unchanged. The logits it
returns are `log(Σ_k w_k · p_k) / T`: the softmax the engine applies gives back the weighted
mean of the members' (calibrated) probabilities, tempered by the ensemble's own T.

Members may differ in encoders (a `fast` and a `medium` member), hence in preprocessing. An
ensemble input is one preprocessing of one column: members that read a column the same way share
it under the member's input name; a member reading it differently gets its own input,
`<input>@<member>`, which the predictor fills from the same field (see `variant_base`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from mmfuse.encoders.base import EncoderError
from mmfuse.model.config import ConfigError, FusionConfig, InputConfig, ModelConfig
from mmfuse.model.multimodal import MultimodalModel

VARIANT = "@"  # `<input>@<member>`: the same column, preprocessed for that member
# The smallest mixture probability kept before the log (a float32 softmax can give 0).
_TINY = 1e-12

# (model, input name, its batch value, B bool: rows that have it, tokens wanted) →
# (B×D vector, tokens or None, token mask or None): `MultimodalModel.encode_input`'s contract.
EncodeInput = Callable[[MultimodalModel, str, object, Tensor, bool], tuple]


def variant_base(name: str) -> str:
    """The input a request field names: `image@gated-seed0` → `image`."""
    return name.split(VARIANT, 1)[0]


def _input_key(spec: InputConfig, model: MultimodalModel, name: str) -> tuple:
    """What must agree for two members to share one preprocessed input (text: the tokenizer,
    which follows from the encoder and its options)."""
    key = (spec.column, spec.modality, repr(model.encoders[name].input_spec.to_dict()))
    if spec.modality == "text":
        key += (spec.encoder, repr(sorted(spec.options.items())))
    return key


def ensemble_inputs(
    configs: Mapping[str, ModelConfig], models: Mapping[str, MultimodalModel]
) -> tuple[dict[str, InputConfig], dict[str, dict[str, str]]]:
    """`(ensemble inputs {name: InputConfig}, routes {member: {member input: ensemble input}})`."""
    inputs: dict[str, InputConfig] = {}
    keys: dict[str, tuple] = {}
    routes: dict[str, dict[str, str]] = {}
    for member, config in configs.items():
        routes[member] = {}
        for name in config.names:
            spec = config.inputs[name]
            key = _input_key(spec, models[member], name)
            shared = next(
                (e for e, k in keys.items() if k == key and variant_base(e) == name), None
            )
            if shared is None:
                shared = name if name not in inputs else f"{name}{VARIANT}{member}"
                inputs[shared], keys[shared] = spec, key
            routes[member][name] = shared
    return inputs, routes


def ensemble_config(configs: Mapping[str, ModelConfig], inputs: Mapping[str, InputConfig]):
    """The ModelConfig an ensemble presents: its inputs, the members' (shared) heads, and the
    fusion named "ensemble" (it cannot be built; `load_model` builds the members instead)."""
    first = next(iter(configs.values()))
    for name, config in configs.items():
        theirs = [(h.task, h.classes) for h in config.heads]
        if theirs != [(h.task, h.classes) for h in first.heads]:
            raise ConfigError(
                f"ensemble member {name!r} predicts {theirs}, unlike the first member; every "
                "member must be trained on the same label columns and classes"
            )
    return ModelConfig(inputs=dict(inputs), heads=first.heads, fusion=FusionConfig("ensemble"))


class EnsembleModel(nn.Module):
    """Members (a dict by name), their weights (summing to 1) and which inputs each reads.

    `routes[member][member input]` is the ensemble input that feeds it. Members of weight 0 are
    kept (their scores are reported) but never run.
    """

    fusion = None  # no fusion weights to report: the engine asks `fusion.has_weights`

    def __init__(
        self,
        members: Mapping[str, MultimodalModel],
        weights: Mapping[str, float],
        routes: Mapping[str, Mapping[str, str]],
    ):
        super().__init__()
        self.members = nn.ModuleDict(dict(members))
        self.weights = {n: float(weights.get(n, 0.0)) for n in self.members}
        if not any(w > 0 for w in self.weights.values()):
            raise ConfigError(
                f"ensemble weights {self.weights} are all 0; at least one must be > 0"
            )
        self.routes = {m: dict(routes[m]) for m in self.members}
        self.names: list[str] = sorted({e for r in self.routes.values() for e in r.values()})
        first = next(iter(self.members.values()))
        self.register_buffer("temperature", torch.ones(len(first.tasks)))

    @property
    def tasks(self) -> list[str]:
        return next(iter(self.members.values())).tasks

    @property
    def encoders(self) -> dict[str, nn.Module]:
        """Per ensemble input, an encoder that reads it (for its input spec and tokenizer)."""
        out: dict[str, nn.Module] = {}
        for member, route in self.routes.items():
            for name, shared in route.items():
                out.setdefault(shared, self.members[member].encoders[name])
        return out

    def active(self) -> list[str]:
        return [n for n, w in self.weights.items() if w > 0]

    def only(self, member: str) -> EnsembleModel:
        """The same modules predicting with `member` alone (its own calibration, no other T)."""
        one = EnsembleModel(self.members, {member: 1.0}, self.routes)
        return one.to(self.temperature.device)

    def tempered_parts(self) -> list[nn.Module]:
        """Every module with a temperature: itself, its members and, in a bag, theirs."""
        out: list[nn.Module] = [self]
        for member in self.members.values():
            out += member.tempered_parts() if isinstance(member, EnsembleModel) else [member]
        return out

    temperatures = MultimodalModel.temperatures
    set_temperatures = MultimodalModel.set_temperatures

    def _member_mask(self, member: str, mask: Tensor) -> Tensor:
        """B×M_member: the ensemble mask's columns of the member's inputs, in its order."""
        cols = [self.names.index(self.routes[member][n]) for n in self.members[member].names]
        return mask[:, cols]

    def encode(
        self,
        inputs: Mapping,
        mask: Tensor,
        features: Mapping[str, Tensor] | None = None,
        *,
        encode_input: EncodeInput | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Each active model's encoding, keyed `<member>/<input>` (`<member>/<fold>/<input>`
        inside a bag), with an input that several models read through identical encoders (a
        frozen pretrained encoder in every member and fold) encoded once.
        `encode_input(model, name, x, present, want_tokens)` replaces `model.encode_input`
        (the ONNX export's full-batch encoding)."""
        if features:
            raise ConfigError(
                "an ensemble's members encode their inputs themselves (their encoders differ), "
                "so cached features cannot be passed; predict from the inputs"
            )
        encode_input = encode_input or _encode_input
        feats, tokens, token_mask = {}, {}, {}
        done: dict[tuple, tuple] = {}
        for prefix, model, route in self.leaves():
            want = getattr(model.fusion, "uses_tokens", False)
            for name in model.names:
                shared = route[name]
                key = (shared, self._encoder_group(model, name), want)
                if key not in done:
                    present = mask[:, self.names.index(shared)]
                    done[key] = encode_input(model, name, inputs.get(shared), present, want)
                feats[prefix + name], t, t_mask = done[key]
                if t is not None:
                    tokens[prefix + name], token_mask[prefix + name] = t, t_mask
        return feats, tokens, token_mask

    def leaves(self, prefix: str = "", outer: Mapping[str, str] | None = None):
        """Every active model inside, bags opened: `(its keys' prefix, model, {its input:
        this ensemble's input})`."""
        for member in self.active():
            model = self.members[member]
            route = {n: (outer or {}).get(e, e) for n, e in self.routes[member].items()}
            if isinstance(model, EnsembleModel):
                yield from model.leaves(f"{prefix}{member}/", route)
            else:
                yield f"{prefix}{member}/", model, route

    def _encoder_group(self, model: MultimodalModel, name: str) -> int:
        """Which earlier encoder of the same input name this one equals (same registered
        config, preprocessing and tensors, neither training), else a new group; settled again
        after `train()`/`eval()`, `to()` and `load_state_dict`."""
        groups = self.__dict__.setdefault("_groups", {})
        if (id(model), name) not in groups:
            encoder = model.encoders[name]
            state = encoder.state_dict()
            group = len(groups)
            for (_, other_name), (g, other, other_state) in list(groups.items()):
                if other_name == name and _same_encoder(encoder, state, other, other_state):
                    group = g
                    break
            groups[(id(model), name)] = (group, encoder, state)
        return groups[(id(model), name)][0]

    def train(self, mode: bool = True) -> EnsembleModel:
        self.__dict__.pop("_groups", None)  # weights may change while training: compare again
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_groups", None)  # moved or cast: the kept tensors are stale
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_groups", None)
        return super().load_state_dict(*args, **kwargs)

    def classify(
        self,
        feats: Mapping[str, Tensor],
        mask: Tensor,
        tokens: Mapping[str, Tensor] | None = None,
        token_mask: Mapping[str, Tensor] | None = None,
        return_weights: bool = False,
    ):
        """The weighted mean of the active members' probabilities, as tempered log-probabilities
        `{task: B×C}`. A row a member has no input for is left to the others (their weights
        renormalised), as a model with one input missing still predicts from the rest."""
        mixed: dict[str, Tensor] = {}
        total = mask.new_zeros(mask.shape[0], dtype=torch.float32)  # B: weight of present members
        for member in self.active():
            own_mask = self._member_mask(member, mask)
            has = own_mask.any(dim=1)  # B
            rows = None
            # Traced (ONNX), every row goes through each member and absent ones weigh 0.
            if not torch.jit.is_tracing():
                if not bool(has.any()):
                    continue
                rows = None if bool(has.all()) else has.nonzero().flatten()
            part = _member_part(member, rows, feats, tokens, token_mask)
            logits = self.members[member].classify(
                part[0], own_mask if rows is None else own_mask[rows], part[1], part[2]
            )
            weight = self.weights[member] * has.float()  # B
            total = total + weight
            for task, lg in logits.items():
                p = lg.float().softmax(-1)  # b×C
                if rows is not None:
                    p = p.new_zeros(mask.shape[0], p.shape[1]).index_copy(0, rows, p)
                p = p * weight[:, None]
                mixed[task] = p if task not in mixed else mixed[task] + p
        out = {
            t: (mixed[t] / total.clamp_min(_TINY)[:, None]).clamp_min(_TINY).log()
            / self.temperature[i]
            for i, t in enumerate(self.tasks)
        }
        return (out, None) if return_weights else out

    def forward(
        self,
        inputs: Mapping,
        mask: Tensor,
        features: Mapping[str, Tensor] | None = None,
        return_weights: bool = False,
    ):
        feats, tokens, token_mask = self.encode(inputs, mask, features)
        return self.classify(feats, mask, tokens, token_mask, return_weights)


def _member_part(member: str, rows: Tensor | None, *parts: Mapping | None) -> list[dict]:
    """The `<member>/` entries of each dict, keyed by the member's own input names, at `rows`
    (None: every row)."""
    prefix = f"{member}/"
    out = []
    for d in parts:
        own = {k[len(prefix) :]: v for k, v in (d or {}).items() if k.startswith(prefix)}
        out.append(own if rows is None else {k: v[rows] for k, v in own.items()})
    return out


def _same_encoder(a: nn.Module, a_state: dict, b: nn.Module, b_state: dict) -> bool:
    """Whether `a` and `b` give the same output for the same input: both in eval mode, built
    from the same registered config (options such as pooling included), the same preprocessing,
    bit-identical tensors. An encoder without a registered config is never shared."""
    if a.training or b.training or type(a) is not type(b) or a_state.keys() != b_state.keys():
        return False
    configs = []
    for encoder in (a, b):
        try:
            configs.append((encoder.config(), encoder.input_spec.to_dict()))
        except (AttributeError, EncoderError):
            return False
    return configs[0] == configs[1] and all(torch.equal(a_state[k], b_state[k]) for k in a_state)


def _encode_input(model: MultimodalModel, name: str, x, present: Tensor, want_tokens: bool):
    return model.encode_input(name, x, present, want_tokens)
