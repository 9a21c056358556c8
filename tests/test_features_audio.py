"""Audio features against librosa, per-clip top_db, augmentation and the AudioSpec pipeline.

Agreement is measured as relative error = max|ours - librosa| / max|librosa| over a clip's whole
feature matrix (dB or MFCC), and must be <= 1e-8 in float64 and <= 1e-4 in float32.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import librosa
import numpy as np
import pytest
import soundfile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmfuse.features import (
    MFCC,
    AudioSpec,
    LogMel,
    add_noise,
    audio_transform,
    fix_length,
    log_mel,
    mel_spectrogram,
    mfcc,
    spec_augment,
)

TOLERANCE = {np.float64: 1e-8, np.float32: 1e-4}

# Several librosa parameter sets: FFT sizes, hops, windows shorter than the FFT, mel ranges,
# centre padding on and off, magnitude and power, with and without top_db.
PARAMS = [
    dict(n_fft=400, hop_length=160, n_mels=64, top_db=80.0),
    dict(n_fft=512, hop_length=128, win_length=400, n_mels=40, fmin=50.0, fmax=7000.0),
    dict(n_fft=1024, hop_length=256, n_mels=80, center=False, top_db=None),
    dict(n_fft=256, hop_length=64, n_mels=32, power=1.0, top_db=80.0),
    dict(n_fft=2048, hop_length=512, n_mels=128, fmin=20.0, power=1.0, top_db=None),
    dict(n_fft=300, hop_length=100, win_length=256, n_mels=24, center=False, fmax=4000.0),
]


def relative_error(ours: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(ours.numpy() - reference).max() / np.abs(reference).max())


def librosa_log_mel(y: np.ndarray, sr: int, top_db: float | None = 80.0, **params) -> np.ndarray:
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, **params), top_db=top_db)


def librosa_mfcc(y, sr, n_mfcc, top_db=80.0, lifter=0.0, **params) -> np.ndarray:
    if top_db == 80.0:  # librosa.feature.mfcc's own path, to test against it verbatim
        return librosa.feature.mfcc(y=y, sr=sr, n_mfcc=n_mfcc, lifter=lifter, **params)
    db = librosa_log_mel(y, sr, top_db=top_db, **params)
    return librosa.feature.mfcc(S=db, n_mfcc=n_mfcc, lifter=lifter)


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> tuple[np.ndarray, int]:
    """A real spoken word, made with espeak-ng: (float64 samples, sample rate)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail(
            "espeak-ng is not installed; the speech checks need it (apt-get install espeak-ng)"
        )
    path = tmp_path_factory.mktemp("speech") / "seven.wav"
    subprocess.run([espeak, "-w", str(path), "seven"], check=True, capture_output=True)
    y, sr = soundfile.read(path, dtype="float64")
    assert y.ndim == 1 and len(y) > sr // 4, f"espeak-ng wrote {y.shape} samples at {sr} Hz"
    return y, sr


def random_clips(dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((3, 8000))
    clips[1] *= 1e-3  # a quiet clip
    clips[2] = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000) + 0.01 * clips[2]  # a tone
    return clips.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("params", PARAMS)
def test_random_clips_match_librosa_per_clip(params, dtype):
    clips = random_clips(dtype)
    ours_db = log_mel(torch.from_numpy(clips), sr=16000, **params)
    ours_mfcc = mfcc(torch.from_numpy(clips), sr=16000, n_mfcc=13, **params)
    assert ours_db.dtype == ours_mfcc.dtype == torch.from_numpy(clips).dtype
    for i, y in enumerate(clips):
        ref_db = librosa_log_mel(y, 16000, **params)
        ref_mfcc = librosa_mfcc(y, 16000, 13, **params)
        assert ours_db[i].shape == ref_db.shape
        assert relative_error(ours_db[i], ref_db) <= TOLERANCE[dtype]
        assert relative_error(ours_mfcc[i], ref_mfcc) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("params", PARAMS)
def test_speech_matches_librosa(speech, params, dtype):
    y, sr = speech
    y = y.astype(dtype)
    ours_db = log_mel(torch.from_numpy(y), sr=sr, **params)
    ours_mfcc = mfcc(torch.from_numpy(y), sr=sr, n_mfcc=20, **params)
    assert relative_error(ours_db, librosa_log_mel(y, sr, **params)) <= TOLERANCE[dtype]
    assert relative_error(ours_mfcc, librosa_mfcc(y, sr, 20, **params)) <= TOLERANCE[dtype]


def test_mfcc_lifter_matches_librosa(speech):
    y, sr = speech
    ours = mfcc(torch.from_numpy(y), sr=sr, n_mfcc=13, lifter=22.0)
    assert relative_error(ours, librosa_mfcc(y, sr, 13, lifter=22.0)) <= 1e-8


def test_mel_spectrogram_matches_librosa():
    y = random_clips(np.float64)[0]
    ours = mel_spectrogram(torch.from_numpy(y), sr=16000, n_fft=512, hop_length=128)
    ref = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=128)
    assert relative_error(ours, ref) <= 1e-12


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("norm", ["slaney", None, 1, np.inf])
def test_mel_filterbank_is_librosas_to_the_bit(htk, norm):
    # mmfuse builds the bank itself (importing librosa cost seconds per process); same numbers.
    from mmfuse.features.mel_scale import mel_weights

    cases = [(16000, 512, 64, 0.0, None), (22050, 2048, 128, 20.0, 8000.0),
             (8000, 256, 40, 125.0, 3800.0), (44100, 1024, 96, 0.0, None)]  # fmt: skip
    for sr, n_fft, n_mels, fmin, fmax in cases:
        ours = mel_weights(sr, n_fft, n_mels, fmin, fmax, htk, norm)
        theirs = librosa.filters.mel(
            sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm
        )
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_mel_filterbank_with_empty_bands_says_so():
    from mmfuse.features.mel_scale import mel_weights

    with pytest.warns(UserWarning, match="without an FFT bin"):
        mel_weights(8000, 64, 128)


def test_audio_front_end_does_not_import_librosa():
    code = (
        "import sys, torch\n"
        "from mmfuse.features.audio import log_mel\n"
        "log_mel(torch.randn(1, 16000), 16000, n_fft=512, hop_length=160, n_mels=64)\n"
        "print('librosa' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_top_db_is_per_clip_not_per_batch():
    rng = np.random.default_rng(1)
    quiet = 1e-4 * rng.standard_normal(16000)
    loud = rng.standard_normal(16000)
    quiet[:4000] = 0.0  # silence that top_db clips, against whichever peak it is given
    batch = torch.from_numpy(np.stack([loud, quiet]))
    for feature in (log_mel, mfcc):
        alone = feature(torch.from_numpy(quiet), sr=16000, n_fft=400, hop_length=160)
        batched = feature(batch, sr=16000, n_fft=400, hop_length=160)[1]
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-12)
    # librosa on the 2-D batch clips against the batch peak, so the quiet clip changes there.
    kw = dict(sr=16000, n_fft=400, hop_length=160)
    librosa_batched = librosa_log_mel(batch.numpy(), **kw)[1]
    librosa_alone = librosa_log_mel(quiet, **kw)
    assert np.abs(librosa_batched - librosa_alone).max() > 1.0
    assert relative_error(log_mel(torch.from_numpy(quiet), **kw), librosa_alone) <= 1e-8


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    n=st.integers(256, 3000),
    n_fft=st.sampled_from([128, 200, 256]),
    hop=st.integers(32, 128),
    center=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_shapes_and_dtypes(lead, n, n_fft, hop, center, dtype):
    wave = torch.randn(*lead, n, dtype=dtype)
    frames = 1 + (n // hop if center else (n - n_fft) // hop)
    out = log_mel(wave, sr=8000, n_fft=n_fft, hop_length=hop, n_mels=16, center=center)
    assert out.shape == (*lead, 16, frames)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    coeffs = mfcc(wave, sr=8000, n_mfcc=7, n_fft=n_fft, hop_length=hop, n_mels=16, center=center)
    assert coeffs.shape == (*lead, 7, frames)


def test_half_precision_computes_in_float32():
    wave = torch.randn(2, 4000)
    out = log_mel(wave.half(), sr=16000, n_fft=400, hop_length=160)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, log_mel(wave.half().float(), sr=16000, n_fft=400, hop_length=160)
    )


def test_bad_inputs_name_the_fix():
    with pytest.raises(TypeError, match="32768"):
        log_mel(torch.zeros(1000, dtype=torch.int16))
    with pytest.raises(ValueError, match="center=True"):
        log_mel(torch.zeros(100), n_fft=400, center=False)
    with pytest.raises(ValueError, match="empty"):
        log_mel(torch.zeros(0, 1000))
    with pytest.raises(ValueError, match="n_mfcc"):
        mfcc(torch.zeros(4000), n_mfcc=200, n_mels=64)


def test_modules_built_from_spec_match_functions():
    spec = AudioSpec(n_fft=512, hop_length=128, n_mels=40, n_mfcc=13, fmin=30.0, top_db=60.0)
    wave = torch.randn(2, 16000)
    kw = dict(sr=16000, n_fft=512, hop_length=128, n_mels=40, fmin=30.0, top_db=60.0)
    torch.testing.assert_close(LogMel.from_spec(spec)(wave), log_mel(wave, **kw))
    torch.testing.assert_close(MFCC.from_spec(spec)(wave), mfcc(wave, n_mfcc=13, **kw))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    wave = torch.from_numpy(random_clips(np.float64))
    for feature in (log_mel, mfcc):
        cpu = feature(wave, sr=16000, n_fft=400, hop_length=160)
        gpu = feature(wave.cuda(), sr=16000, n_fft=400, hop_length=160)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-9)


# --- augmentation -------------------------------------------------------------------------


def test_spec_augment_is_reproducible_and_per_sample():
    spec = torch.randn(6, 40, 100)
    a = spec_augment(spec, generator=torch.Generator().manual_seed(3))
    b = spec_augment(spec, generator=torch.Generator().manual_seed(3))
    c = spec_augment(spec, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    masks = a != spec
    assert any(not torch.equal(masks[0], masks[i]) for i in range(1, 6))


def test_spec_augment_masks_whole_bands_with_fill():
    spec = torch.randn(8, 32, 50)
    out = spec_augment(spec, 1, 6, 1, 9, fill=-100.0, generator=torch.Generator().manual_seed(0))
    masked = out == -100.0  # B×F×T
    for m in masked:
        rows = m.all(dim=1)  # frequency bands cover every frame
        cols = m.all(dim=0)  # time bands cover every bin
        assert rows.sum() <= 6 and cols.sum() <= 9
        assert torch.equal(m, rows[:, None] | cols[None, :])
    kept = ~masked
    assert torch.equal(out[kept], spec[kept])


def test_spec_augment_mean_fill_and_no_masks():
    spec = torch.randn(2, 16, 20) + torch.tensor([0.0, 50.0])[:, None, None]
    out = spec_augment(spec, 2, 16, 0, 0, generator=torch.Generator().manual_seed(1))
    changed = out != spec
    for i in range(2):
        torch.testing.assert_close(out[i][changed[i]], spec[i].mean().expand(int(changed[i].sum())))
    assert torch.equal(spec_augment(spec, 0, 8, 0, 8), spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_noise_hits_the_snr_per_clip(dtype):
    wave = (
        torch.randn(4, 16000, dtype=dtype)
        * torch.tensor([1.0, 0.01, 3.0, 0.2], dtype=dtype)[:, None]
    )
    snr = torch.tensor([0.0, 10.0, 20.0, -5.0], dtype=dtype)
    noisy = add_noise(wave, snr, generator=torch.Generator().manual_seed(0))
    achieved = 10 * torch.log10(wave.square().mean(-1) / (noisy - wave).square().mean(-1))
    torch.testing.assert_close(achieved, snr, rtol=0, atol=1e-3)
    again = add_noise(wave, snr, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)


def test_add_noise_with_given_noise_and_scalar_snr():
    wave, noise = (
        torch.randn(3, 8000, dtype=torch.float64),
        torch.rand(3, 8000, dtype=torch.float64),
    )
    noisy = add_noise(wave, 6.0, noise=noise)
    added = noisy - wave
    achieved = 10 * torch.log10(wave.square().mean(-1) / added.square().mean(-1))
    torch.testing.assert_close(achieved, torch.full((3,), 6.0, dtype=torch.float64))
    # the noise is only scaled, per clip
    ratio = added / noise
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    with pytest.raises(ValueError, match="noise shape"):
        add_noise(wave, 6.0, noise=noise[:, :100])


# --- AudioSpec pipeline -------------------------------------------------------------------


def test_fix_length_crops_and_pads():
    wave = torch.arange(10.0).expand(3, 10)
    assert torch.equal(fix_length(wave, 4), wave[:, 3:7])  # centre
    assert torch.equal(fix_length(wave[:, :3], 5)[0], torch.tensor([0.0, 1, 2, 0, 0]))
    cut = fix_length(wave, 4, train=True, generator=torch.Generator().manual_seed(0))
    for row in cut:  # a contiguous window somewhere inside
        assert torch.equal(row, torch.arange(row[0].item(), row[0].item() + 4))


@pytest.mark.parametrize("feature,rows", [("log_mel", 64), ("mfcc", 20), ("waveform", None)])
def test_audio_transform_eval_is_deterministic(feature, rows):
    spec = AudioSpec(feature=feature, duration=0.5)
    transform = audio_transform(spec, train=False)
    wave = torch.randn(3, 12000)
    out = transform(wave)
    assert torch.equal(out, transform(wave))
    if rows is None:
        assert out.shape == (3, 8000)
    else:
        assert out.shape == (3, rows, 51)
        assert transform(wave[0]).shape == (rows, 51)  # one clip, for per-sample loading


def test_audio_transform_eval_equals_features_of_centre_crop():
    spec = AudioSpec(feature="log_mel", duration=1.0)
    wave = torch.randn(2, 20000)
    expected = LogMel.from_spec(spec)(wave[:, 2000:18000])
    torch.testing.assert_close(audio_transform(spec)(wave), expected)


def test_audio_transform_train_is_seeded_and_random():
    transform = audio_transform(AudioSpec(feature="log_mel"), train=True)
    wave = torch.randn(4, 20000)
    a = transform(wave, torch.Generator().manual_seed(0))
    b = transform(wave, torch.Generator().manual_seed(0))
    c = transform(wave, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(transform.eval()(wave), a)
    assert torch.equal(transform(wave), transform(wave))  # .eval() makes it deterministic


def test_audio_transform_rejects_unknown_feature():
    with pytest.raises(ValueError, match="log_mel"):
        audio_transform(AudioSpec(feature="spectrogram"))
