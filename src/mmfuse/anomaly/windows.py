"""An AnomalyDetector as a window scorer for `mmfuse.infer.live.watch` (`mmfuse detect`).

A window of a live source is scored as a clip would be: each frames input gets the window's
frames, each audio-track input (`<column>_audio`) the window's audio, both through the eval
transform of the input's encoder (as the feature cache preprocesses files), then the frozen
encoder, the input's scorer, its held-out standardisation and the Stouffer fusion. An input the
source lacks (no sound track) does not vote, as for a clip.

An input *fires* when its own z-score is above the threshold: the fused score of a window where
only that input were present (Stouffer of one z-score is the z-score itself), so "inputs" says
which input would have raised the alarm alone.
"""

from __future__ import annotations

import numpy as np
import torch

from mmfuse.anomaly.detector import AnomalyDetector, fuse_scores
from mmfuse.features.sample import SampleLoader
from mmfuse.infer.live import decode_sizer, window_tensor
from mmfuse.infer.live_events import Decision
from mmfuse.model.config import ConfigError

LABEL = "anomaly"


class AnomalyWindows:
    def __init__(self, detector: AnomalyDetector, source: str = ""):
        detector._check_fitted()
        self.detector = detector
        inputs = {n: detector.inputs_[n] for n in detector.scorers_}
        video = [n for n, s in inputs.items() if s.modality == "video"]
        columns = {inputs[n].column for n in video}
        audio = [
            n
            for n, s in inputs.items()
            if s.modality == "audio" and (s.column in columns or not video)
        ]
        if not video and not audio:
            described = {n: s.modality for n, s in inputs.items()}
            raise ConfigError(
                f"the detector {source} has no video or audio input (its inputs: {described}); "
                "detect feeds a source's frames and sound track: fit one on a video or audio "
                "column"
            )
        specs = {n: detector.encoders_[n].input_spec for n in video + audio}
        self.loader = SampleLoader({n: inputs[n].modality for n in specs}, specs)
        self.frames = {n: specs[n].frames for n in video}
        self.audio_rates = {n: specs[n].sample_rate for n in audio}
        self.frame_size = decode_sizer([specs[n] for n in video])
        self.extra = {"threshold": round(float(detector.threshold_), 4)}

    def score(self, media: dict[str, torch.Tensor]) -> Decision:
        per_input = {name: np.array([np.nan]) for name in self.detector.scorers_}
        for name, x in media.items():
            per_input[name] = np.array([self._z(name, x)])
        fused = float(fuse_scores(per_input)[0])
        threshold = self.detector.threshold_
        z = {n: float(v[0]) for n, v in per_input.items() if not np.isnan(v[0])}
        fired = [n for n, v in z.items() if v > threshold]
        label = LABEL if fused > threshold else None
        return Decision(label, fused, z, fired)

    def _z(self, name: str, x: torch.Tensor) -> float:
        x = window_tensor(self.loader.transforms[name], x, name in self.frames)
        with torch.no_grad():
            feature = self.detector.encoders_[name](x.unsqueeze(0)).float().numpy()  # 1×D
        return float(self.detector.input_z(name, feature)[0])


__all__ = ["LABEL", "AnomalyWindows"]
