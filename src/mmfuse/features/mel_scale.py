"""librosa's mel filterbank (`librosa.filters.mel`), the same arithmetic in numpy.

Importing librosa (and numba with it) took 3.6 s of every process that built an audio model's
front end (training, prediction, the service, each spawned worker), for a matrix of a few
hundred numbers. The steps below are librosa 0.11's, in its order and dtypes, so the matrix is
the same to the bit (`tests/test_features_audio.py` compares them); librosa stays the reference
the tests measure against.
"""

from __future__ import annotations

import warnings

import numpy as np

# The Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(frequencies, htk: bool = False):
    """Hz → mels (`librosa.hz_to_mel`)."""
    frequencies = np.asanyarray(frequencies)
    if htk:
        return 2595.0 * np.log10(1.0 + frequencies / 700.0)
    mels = frequencies / _F_SP
    if frequencies.ndim:
        log_t = frequencies >= _MIN_LOG_HZ
        mels[log_t] = _MIN_LOG_MEL + np.log(frequencies[log_t] / _MIN_LOG_HZ) / _LOGSTEP
    elif frequencies >= _MIN_LOG_HZ:
        mels = _MIN_LOG_MEL + np.log(frequencies / _MIN_LOG_HZ) / _LOGSTEP
    return mels


def mel_to_hz(mels, htk: bool = False):
    """Mels → Hz (`librosa.mel_to_hz`)."""
    mels = np.asanyarray(mels)
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = _F_SP * mels
    if mels.ndim:
        log_t = mels >= _MIN_LOG_MEL
        freqs[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_t] - _MIN_LOG_MEL))
    elif mels >= _MIN_LOG_MEL:
        freqs = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL))
    return freqs


def mel_weights(
    sr: float,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: str | float | None = "slaney",
) -> np.ndarray:
    """`librosa.filters.mel(sr=sr, n_fft=n_fft, ...)`: float32 `n_mels×(n_fft//2+1)`."""
    fmax = float(sr) / 2 if fmax is None else fmax
    weights = np.zeros((int(n_mels), 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    if norm == "slaney":
        weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    elif isinstance(norm, str):
        raise ValueError(f"mel filterbank norm={norm!r}: use 'slaney', a number or None")
    elif norm is not None:
        import librosa  # an L-p norm of each filter: rare, so librosa's own normalise

        weights = librosa.util.normalize(weights, norm=norm, axis=-1)
    if not np.all((mel_f[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn(
            f"{n_mels} mel bands over {fmin:g}-{fmax:g} Hz with n_fft={n_fft} at {sr} Hz leave "
            "some bands without an FFT bin (they stay zero): lower n_mels, or raise n_fft",
            stacklevel=2,
        )
    return weights
