"""Peak memory of reading hostile files, and of `validate` on all of them, in fresh processes.

    .venv/bin/python benchmarks/faults_memory.py [--src src] [--workers 4 16] [--skip-slow]
    .venv/bin/python benchmarks/faults_memory.py --service [--src src] [--skip-slow]

Each hostile file (small on disk, huge or poisonous decoded) is made here by the test media
factory, then read in a child process of its own three ways: the plain reader
(`read_image(p)`, `read_audio(p, sample_rate=16000)`, `read_video(p, 8)`), the loader training
and the service use (`SampleLoader.load` with 224 px images, 1 s of 16 kHz audio, 8 frames of
112 px), and `validate` on a manifest of every file; `validate` also checks 16 large but
legitimate pictures, where how many files it decodes at once sets the peak. A child reports
its peak RSS (`ru_maxrss`), how much of it came after the imports, the outcome (ok or the
`MediaError` reason) and the wall time. `--src` points the children at another checkout's
`src/` (e.g. a `git worktree` of an older commit) to measure "before" with the same files.
Each child runs under an address-space cap (`--cap-gb`), so an unbounded decode fails there
instead of starving the machine, and reads "over the cap". The load average is printed with
the table: on a shared machine the times move with it, the memory does not.

`--service` measures the service instead: a tiny untrained model (image, 1 s audio and 8-frame
video inputs) is saved by the `src/` under test, `python -m mmfuse serve MODEL` starts on
127.0.0.1 under the same cap, and each large hostile file is POSTed alone to /predict as the
field of its kind, each to a fresh server (VmHWM only grows); after the answer the server's peak
RSS (VmHWM of it and any children), what it added over the idle server, and the HTTP status are
read. A small legitimate PNG comes first, as a control that the server answers 200.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import media_factory as mf  # noqa: E402  (the test media factory makes the files)

# In the child: imports first (their peak is the baseline), then one operation.
CHILD = r"""
import json, resource, sys, time
from mmfuse.errors import MediaError
from mmfuse.data.image import read_image
from mmfuse.data.audio import read_audio
from mmfuse.data.video import read_video
from mmfuse.data.validation import validate
from mmfuse.features.sample import SampleLoader
from mmfuse.features.spec import AudioSpec, ImageSpec, VideoSpec
import pandas as pd

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

how, modality, arg = sys.argv[1], sys.argv[2], sys.argv[3]
SPECS = {"image": ImageSpec(size=224), "audio": AudioSpec(), "video": VideoSpec(frames=8)}
READ = {
    "image": lambda p: read_image(p),
    "audio": lambda p: read_audio(p, sample_rate=16000),
    "video": lambda p: read_video(p, 8),
}
if how == "load":
    loader = SampleLoader({modality: modality}, {modality: SPECS[modality]})
base = peak_mb()
start = time.perf_counter()
outcome = "ok"
try:
    if how == "read":
        READ[modality](arg)
    elif how == "load":
        loader.load(modality, arg)
    else:
        rows = json.loads(arg)
        problems = validate(pd.DataFrame(rows), workers=int(modality))
        errors = sorted({p.reason for p in problems if p.severity == "error"})
        outcome = f"{len(problems)} problems: " + ", ".join(errors)
except MediaError as e:
    outcome = e.reason
except (MemoryError, RuntimeError) as e:  # RuntimeError: torch out of memory under the cap
    outcome = f"{type(e).__name__} (over the address-space cap)"
print(json.dumps({"peak": peak_mb(), "base": base, "s": time.perf_counter() - start,
                  "outcome": outcome}))
"""


def make_files(folder: Path, slow: bool) -> dict[str, tuple[str, Path]]:
    """name → (modality, path) of every hostile file."""
    files = {
        "1×65535 PNG": ("image", mf.tall_png(folder)),
        "9400×9400 PNG": ("image", mf.big_png(folder, 9400)),
        "NaN float TIFF": ("image", mf.poisoned_float_tiff(folder)),
        "8000×8000 MJPEG": ("video", mf.huge_mjpeg(folder)),
        "NaN float WAV": ("audio", mf.poisoned_wav(folder, float("nan"))),
        "1e30 float WAV": ("audio", mf.poisoned_wav(folder, 1e30)),
        "truncated WAV": ("audio", mf.truncated_audio(folder, "wav", keep=0.02)),
        "truncated FLAC": ("audio", mf.truncated_audio(folder, "flac")),
        "truncated AIFF": ("audio", mf.truncated_audio(folder, "aiff")),
    }
    if slow:  # ~5 s to encode: 3 h of 44.1 kHz silence, about 1.5 MB
        files["3 h silent FLAC"] = ("audio", mf.long_silent_flac(folder, 3 * 3600, 44100))
    else:
        files["20 min silent FLAC"] = ("audio", mf.long_silent_flac(folder))
    return files


def large_pictures(folder: Path, count: int) -> list[dict]:
    """Rows of `count` copies of a 4800×4800 (23 Mpx) PNG: within every budget, each one
    legitimate, together heavy if decoded all at once."""
    source = mf.big_png(folder, 4800)
    rows = []
    for i in range(count):
        path = shutil.copy(source, folder / f"picture_{i}.png")
        rows.append({"image": str(path), "label": str(i % 2)})
    return rows


def child(src: Path, cap_gb: float, *args: str, timeout: float = 300.0) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, *args]
    cap = int(cap_gb * 1024**3)

    def limit() -> None:
        # Unbounded decodes reach tens of GB (a 1×65535 PNG resized to 256 px wide): an
        # address-space cap turns that into a MemoryError in the child, not the OOM killer.
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=limit
        )
    except subprocess.TimeoutExpired:
        return {"peak": float("nan"), "base": 0.0, "s": timeout, "outcome": "timed out"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or ["?"])[-1][:60]
        return {"peak": float("nan"), "base": 0.0, "s": float("nan"), "outcome": f"crash: {why}"}
    return json.loads(lines[-1])


def row(name: str, how: str, r: dict) -> str:
    extra = r["peak"] - r["base"]
    return f"| {name} | {how} | {r['peak']:.0f} | {extra:.0f} | {r['s']:.2f} | {r['outcome']} |"


# In a child of the src under test: save an untrained model of tiny encoders to argv[1].
BUILD = r"""
import sys, torch
from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel
from mmfuse.model.saved import save_model
torch.manual_seed(0)
cnn = {"width": 8, "stages": 2, "image_size": 32}
config = ModelConfig(
    inputs={
        "image": InputConfig("image", "image", "cnn", cnn),
        "audio": InputConfig("audio", "audio", "mel-cnn",
                             {"width": 8, "stages": 2, "n_mels": 32, "duration": 1.0}),
        "video": InputConfig("video", "video", "frames",
                             {"image": "cnn", "image_options": cnn, "frames": 8}),
    },
    heads=[HeadConfig("label", ["a", "b"])],
    fusion=FusionConfig("attention", 16),
)
save_model(sys.argv[1], MultimodalModel.from_config(config), config)
"""

SERVICE_FILES = (
    "64×64 PNG (a control)",
    "1×65535 PNG",
    "9400×9400 PNG",
    "8000×8000 MJPEG",
    "3 h silent FLAC",
    "20 min silent FLAC",
)


def capped(cap_gb: float):
    cap = int(cap_gb * 1024**3)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family(pid: int) -> list[int]:
    """pid and its descendants (uvicorn workers, if any)."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            pids += [int(c) for c in task.read_text().split()]
        i += 1
    return pids


def peak_rss_mb(pid: int) -> float:
    """The largest VmHWM (peak resident set) of the server process and its children."""
    peaks = [0.0]
    for p in family(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        peaks += [int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("VmHWM:")]
    return max(peaks)


def request(url: str, body: bytes | None, headers: dict, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, headers=headers), timeout=timeout
        ) as r:
            return r.status, r.read(300).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(300).decode(errors="replace")
    except (OSError, TimeoutError) as e:
        return 0, f"{type(e).__name__}: {e}"[:120]


def post_file(port: int, field: str, path: Path, timeout: float) -> tuple[int, str, float]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    start = time.perf_counter()
    status, text = request(f"http://127.0.0.1:{port}/predict", body, headers, timeout)
    return status, text, time.perf_counter() - start


class Server:
    """`python -m mmfuse serve MODEL` of `src` on 127.0.0.1, capped; stopped on exit."""

    def __init__(self, src: Path, model: Path, cap_gb: float, log: Path):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "mmfuse", "serve", str(model)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=capped(cap_gb)
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            status, _ = request(f"http://127.0.0.1:{self.port}/health", None, {}, 2.0)
            if status == 200:
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not start; see {log}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def measure_service(args: argparse.Namespace, files: dict, tmp: Path) -> None:
    model = tmp / "service-model"
    subprocess.run(
        [sys.executable, "-c", BUILD, str(model)],
        env={**os.environ, "PYTHONPATH": str(args.src)},
        check=True,
    )
    print("| file | field | HTTP | server peak RSS MB (VmHWM) | added MB | s | answer |")
    print("|---|---|---|---|---|---|---|")
    log = tmp / "server.log"
    for name in [n for n in SERVICE_FILES if n in files]:
        field, path = files[name]
        server = Server(args.src, model, args.cap_gb, log)  # a fresh one: VmHWM only grows
        try:
            idle = peak_rss_mb(server.proc.pid)
            status, text, s = post_file(server.port, field, path, timeout=300.0)
            peak = peak_rss_mb(server.proc.pid) if server.alive() else float("nan")
            died = "" if server.alive() else f" (server died, exit {server.proc.returncode})"
        finally:
            server.stop()
        answer = " ".join(text.split())[:80].replace("|", "/") + died
        print(
            f"| {name} | {field} | {status} | {peak:.0f} | {peak - idle:.0f} | {s:.2f} | {answer} |"
        )
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print("server log tail:", *tail, sep="\n  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the mmfuse src/ to run")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--skip-slow", action="store_true", help="a 20 min FLAC, not 3 h")
    parser.add_argument("--cap-gb", type=float, default=12.0, help="address space per child")
    parser.add_argument("--service", action="store_true", help="POST them to `mmfuse serve`")
    args = parser.parse_args()
    print(f"src: {args.src}; load average at start: {os.getloadavg()}")
    if args.service:
        with tempfile.TemporaryDirectory() as tmp:
            files = make_files(Path(tmp), slow=not args.skip_slow)
            files["64×64 PNG (a control)"] = ("image", mf.big_png(Path(tmp), 64))
            measure_service(args, files, Path(tmp))
        print(f"load average at end: {os.getloadavg()}; {time.strftime('%Y-%m-%d %H:%M')}")
        return
    print("| file | how | peak RSS MB | after imports MB | s | outcome |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), slow=not args.skip_slow)
        for name, (modality, path) in files.items():
            for how in ("read", "load"):
                r = child(args.src, args.cap_gb, how, modality, str(path))
                print(row(name, how, r), flush=True)
        rows = [{m: str(p), "label": str(i % 2)} for i, (m, p) in enumerate(files.values())]
        tables = {"all of them": rows, "16 × 4800² PNG": large_pictures(Path(tmp), 16)}
        for name, table in tables.items():
            for workers in args.workers:
                arg = json.dumps(table)
                r = child(args.src, args.cap_gb, "validate", str(workers), arg, timeout=900)
                print(row(name, f"validate, {workers} workers", r), flush=True)
    print(f"load average at end: {os.getloadavg()}; {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
