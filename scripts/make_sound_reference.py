"""Make tests/data/sound_cnn_reference.npz: the aisfx package's own embeddings of real clips.

Inputs: the Debian prompts named in CLIPS (packages `asterisk-core-sounds-en-wav` and
`asterisk-core-sounds-fr-wav`, real voices, 8 kHz, CC-BY-SA), read and resampled to 44.1 kHz by
mmfuse's own reader (`read_audio`, soxr HQ): the very waveforms the test feeds `sound-cnn`.

Reference, per clip: the spectrogram from the package's Essentia front end
(`aisfx/spectrogram/spectrogram_essentia.py`, the one the weights were trained with), then the
package's `model_get_embedding` (blocks of 100 frames every 50, partial blocks dropped) with its
own network (`aisfx.models.cnn2d`) and checkpoint.

Essentia is AGPL-3.0 and never an mmfuse dependency. It runs as a subprocess in a separate
scratch environment given as `--essentia-python`: a Python 3.10 venv with
`pip install essentia==2.1b6.dev1389` (wheels exist for a few CPython versions only). Nothing of
Essentia is imported here; the waveforms travel to it as float32 WAV files.

The fixture holds no audio: per clip its path, sample count and two checksums of the waveform
(so the test notices a resampler that changed), the per-block embeddings, and the Essentia
spectrogram of the first clip (to test the front end on its own).

Run from the repository root, in the project venv, after `make setup`:

    .venv/bin/python scripts/make_sound_reference.py --essentia-python /tmp/r13ess/bin/python
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mmfuse.data.audio import read_audio
from mmfuse.encoders.sound_cnn import BLOCK, BLOCK_HOP, aisfx_checkpoint, load_aisfx_checkpoint

SOUNDS = Path("/usr/share/asterisk/sounds")
CLIPS = [  # 1, 2 and 3 blocks; all shorter than sound-cnn's default duration (5 s)
    "en_US_f_Allison/all-circuits-busy-now.wav",
    "fr_CA_f_June/conf-invalid.wav",
    "en_US_f_Allison/vm-rec-busy.wav",
]
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "sound_cnn_reference.npz"

# Runs in the Essentia environment: argv = the package's front-end file, an output .npz, WAVs.
ESSENTIA_STEP = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("spectrogram_essentia", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out = {}
for i, wav in enumerate(sys.argv[3:]):
    out[str(i)] = module.compute_spectrogram(filename=wav, sr=44100.0, block_size=2048,
        hop_size=1024, n_mels=96, f_min=0.0, f_max=22050.0)
np.savez(sys.argv[2], **out)
"""


def essentia_spectrograms(waves: list[np.ndarray], python: str) -> list[np.ndarray]:
    """The package's Essentia log-mel (`T×96`) of each 44.1 kHz waveform, via `python`."""
    package = Path(aisfx_checkpoint()).parent.parent
    front_end = package / "spectrogram" / "spectrogram_essentia.py"
    with tempfile.TemporaryDirectory() as tmp:
        wavs = []
        for i, wave in enumerate(waves):
            wavs.append(f"{tmp}/{i}.wav")
            sf.write(wavs[-1], wave, 44100, subtype="FLOAT")
        out = f"{tmp}/spec.npz"
        subprocess.run([python, "-c", ESSENTIA_STEP, str(front_end), out, *wavs], check=True)
        with np.load(out) as specs:
            return [specs[str(i)] for i in range(len(waves))]


def package_embeddings(specs: list[np.ndarray]) -> list[np.ndarray]:
    """aisfx's `model_get_embedding` of each spectrogram (`blocks×512`), on its own network."""
    from aisfx.inference import load_bestModel, model_get_embedding
    from aisfx.preprocessing import blocking, spectrogram_normalize

    weights, datasets = load_aisfx_checkpoint()
    model = load_bestModel(weights, datasets, "cpu")
    out = []
    for spec in specs:
        spec = spectrogram_normalize(spec, "original")
        if spec.shape[0] <= BLOCK_HOP:
            # model_get_embedding asserts the block hop is shorter than the clip; its own
            # blocking() gives the one zero-padded block.
            with torch.no_grad():
                blocks = torch.Tensor(blocking(spec, BLOCK, BLOCK_HOP, True))
                out.append(model.get_embedding(blocks).numpy())
        else:
            out.append(model_get_embedding(spec, 0.5, True, model, "cpu").numpy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--essentia-python", required=True, help="python of the Essentia venv")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if importlib.util.find_spec("aisfx") is None:
        raise SystemExit("aisfx is not installed: run `make setup`")
    waves = [read_audio(SOUNDS / clip, sample_rate=44100)[0].numpy() for clip in CLIPS]
    specs = essentia_spectrograms(waves, args.essentia_python)
    embeddings = package_embeddings(specs)
    fixture = {
        "clips": np.array(CLIPS),
        "samples": np.array([len(w) for w in waves]),
        "abs_sum": np.array([np.abs(w.astype(np.float64)).sum() for w in waves]),
        "square_sum": np.array([np.square(w.astype(np.float64)).sum() for w in waves]),
        "spec0": specs[0].astype(np.float32),
        **{f"emb{i}": e.astype(np.float32) for i, e in enumerate(embeddings)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **fixture)
    for clip, wave, emb in zip(CLIPS, waves, embeddings):
        print(f"{clip}: {len(wave) / 44100:.2f} s, {emb.shape[0]} block(s)")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
