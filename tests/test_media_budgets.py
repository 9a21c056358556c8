"""Decode budgets: their sources (defaults, environment, arguments), and that hostile files are
refused before they cost memory, measured as peak RSS in a fresh process."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import media_factory as mf
from mmfuse.data.budgets import ENV, Budgets, resolve
from mmfuse.data.image import DECODE_BYTES_PER_PIXEL
from mmfuse.errors import MmfuseError


def test_defaults_environment_and_overrides(monkeypatch):
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    assert Budgets.from_env() == Budgets()
    monkeypatch.setenv("MMFUSE_MAX_IMAGE_PIXELS", "1e6")
    monkeypatch.setenv("MMFUSE_MAX_AUDIO_SECONDS", "inf")  # no limit
    budgets = Budgets.from_env(video_pixels=10)
    assert budgets.image_pixels == 1_000_000 and isinstance(budgets.image_pixels, int)
    assert math.isinf(budgets.audio_seconds) and budgets.video_pixels == 10
    assert resolve(None) == Budgets.from_env() and resolve(budgets) is budgets


@pytest.mark.parametrize("raw", ["lots", "0", "-5", "nan", "inf"])
def test_a_bad_environment_value_is_one_sentence(monkeypatch, raw):
    monkeypatch.setenv("MMFUSE_MAX_VIDEO_PIXELS", raw)
    with pytest.raises(MmfuseError) as e:
        Budgets.from_env()
    message = str(e.value)
    assert "MMFUSE_MAX_VIDEO_PIXELS" in message and "\n" not in message
    assert str(Budgets().video_pixels) in message  # an example of a good value


def test_a_budget_must_be_positive():
    with pytest.raises(MmfuseError, match="image_aspect"):
        Budgets(image_aspect=0)


# In a fresh process: the imports' peak first, then each read; what each read added to the peak.
_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import pandas as pd
    from mmfuse.data.audio import read_audio
    from mmfuse.data.image import read_image
    from mmfuse.data.validation import validate
    from mmfuse.data.video import read_video
    from mmfuse.errors import MediaError
    from mmfuse.features.sample import SampleLoader
    from mmfuse.features.spec import AudioSpec, ImageSpec

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB

    files = json.loads(sys.argv[1])
    loader = SampleLoader({"a": "audio", "i": "image"}, {"a": AudioSpec(), "i": ImageSpec()})
    reads = {
        "tall": lambda: read_image(files["tall"]),
        "tall_loaded": lambda: loader.load("i", files["tall"]),
        "big": lambda: read_image(files["big"]),
        "mjpeg": lambda: read_video(files["mjpeg"], 8),
        "flac": lambda: read_audio(files["flac"]),
        "flac_loaded": lambda: loader.load("a", files["flac"]).shape,
    }
    out = {}
    for name, read in reads.items():
        before = peak()
        try:
            result = str(read())
        except MediaError as e:
            result = e.reason
        out[name] = (result, peak() - before)
    before = peak()
    rows = [{"image": files["tall"], "label": "a"}, {"image": files["big"], "label": "a"},
            {"video": files["mjpeg"], "label": "b"}, {"audio": files["flac"], "label": "b"}]
    problems = validate(pd.DataFrame(rows), workers=16)
    out["validate"] = (sorted(p.reason for p in problems), peak() - before)
    print(json.dumps(out))
    """
)


def test_hostile_files_are_refused_without_allocating(tmp_path):
    files = {
        "tall": mf.tall_png(tmp_path),
        "big": mf.big_png(tmp_path, 9400),
        "mjpeg": mf.huge_mjpeg(tmp_path),
        "flac": mf.long_silent_flac(tmp_path, seconds=3600),
    }
    assert max(p.stat().st_size for p in files.values()) < 1_000_000
    src = Path(__file__).resolve().parents[1] / "src"
    arg = json.dumps({k: str(v) for k, v in files.items()})
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, arg],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("tall", "tall_loaded", "big", "mjpeg", "flac"):
        assert out[name][0] == "too-large", (name, out[name])
    assert out["flac_loaded"][0].startswith("torch.Size")  # the model's 1 s clip of the hour
    # Each refusal happens from the header: the decoded sizes are 0.2 to 3 GB.
    grown = {name: mb for name, (_, mb) in out.items()}
    assert max(grown.values()) < 64, grown
    reasons, _ = out["validate"]
    assert reasons == ["near-silent", "too-large", "too-large", "too-large"]


_VALIDATE_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import pandas as pd
    from mmfuse.data.validation import validate

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB → bytes

    rows = json.loads(sys.argv[1])
    before = peak()
    problems = validate(pd.DataFrame(rows), workers=int(sys.argv[2]))
    print(json.dumps({"grown": peak() - before, "problems": len(problems)}))
    """
)


def test_validate_memory_is_bounded_whatever_its_workers(tmp_path):
    source = mf.big_png(tmp_path, 3000)  # 9 Mpx: legitimate, within every budget
    rows = [
        {"image": str(shutil.copy(source, tmp_path / f"p{i}.png")), "label": str(i % 2)}
        for i in range(8)
    ]
    one = 3000 * 3000 * DECODE_BYTES_PER_PIXEL
    src = Path(__file__).resolve().parents[1] / "src"
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "MMFUSE_VALIDATE_MEMORY": str(2 * one)}
    grown = {}
    for workers in (1, 8):
        done = subprocess.run(
            [sys.executable, "-c", _VALIDATE_CHILD, json.dumps(rows), str(workers)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        grown[workers] = json.loads(done.stdout.strip().splitlines()[-1])["grown"]
    # Eight workers decode two pictures at a time, as the budget allows: not eight.
    assert grown[8] < 2 * one * 1.2, grown
    assert grown[1] < one * 1.2, grown
