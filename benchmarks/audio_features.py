"""Log-mel and MFCC speed: mmfuse on the whole batch vs librosa clip by clip vs librosa on a 2-D batch.

    .venv/bin/python benchmarks/audio_features.py [--clips 256] [--repeat 3] [--device cpu]

Parameters are AudioSpec's defaults (16 kHz, n_fft 400, hop 160, 64 mels, 20 MFCCs, top_db 80).
Each time is the best of 3 rounds × `--repeat` runs, each block after one warm-up call, in float32. Ratios are how many times
faster mmfuse is than each librosa way.
"""

from __future__ import annotations

import argparse
import time

import librosa
import numpy as np
import torch

from mmfuse.features import AudioSpec, log_mel, mfcc


def best_times(fns: dict, repeat: int, rounds: int = 3, sync=lambda: None) -> dict[str, float]:
    """Best wall time of each function over `rounds` rounds of `repeat` timed calls.

    Each function runs in a block of its own, after one untimed call: librosa's matmuls leave
    OpenBLAS worker threads spin-waiting for a while, and torch timed straight after them shares
    the two cores with those spinners (measured: 15 ms → 30 ms). Repeating the rounds still spreads
    load from other processes over every contender.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            sync()
            for _ in range(repeat):
                start = time.perf_counter()
                fn()
                sync()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per round (3 rounds)")
    parser.add_argument("--device", default="cpu", help="device for mmfuse: cpu or cuda")
    args = parser.parse_args()

    spec = AudioSpec()
    kw = dict(sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, n_mels=spec.n_mels)
    n = round(args.seconds * spec.sample_rate)
    batch = np.random.default_rng(0).standard_normal((args.clips, n)).astype(np.float32)
    wave = torch.from_numpy(batch).to(args.device)
    sync = torch.cuda.synchronize if wave.device.type == "cuda" else (lambda: None)

    def librosa_log_mel(y):
        return librosa.power_to_db(librosa.feature.melspectrogram(y=y, **kw), top_db=spec.top_db)

    def librosa_mfcc(y):
        return librosa.feature.mfcc(y=y, n_mfcc=spec.n_mfcc, **kw)

    rows = []
    for name, ours, reference in [
        ("log-mel", lambda: log_mel(wave, top_db=spec.top_db, **kw), librosa_log_mel),
        ("mfcc", lambda: mfcc(wave, n_mfcc=spec.n_mfcc, top_db=spec.top_db, **kw), librosa_mfcc),
    ]:
        times = best_times(
            {
                "ours": ours,
                "loop": lambda ref=reference: [ref(y) for y in batch],
                "batch": lambda ref=reference: ref(batch),
            },
            args.repeat,
            sync=sync,
        )
        t_ours, t_loop, t_batch = times["ours"], times["loop"], times["batch"]
        rows.append((name, t_ours, t_loop, t_batch))

    print(
        f"{args.clips} clips × {args.seconds:g} s at {spec.sample_rate} Hz, float32, "
        f"torch threads={torch.get_num_threads()}, mmfuse on {args.device}"
    )
    header = (
        f"{'feature':8} | {'mmfuse batch':>12} | {'librosa per clip':>16} | "
        f"{'librosa 2-D batch':>17} | {'× per clip':>10} | {'× 2-D batch':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, t_ours, t_loop, t_batch in rows:
        print(
            f"{name:8} | {t_ours * 1e3:9.1f} ms | {t_loop * 1e3:13.1f} ms | "
            f"{t_batch * 1e3:14.1f} ms | {t_loop / t_ours:9.1f}× | {t_batch / t_ours:10.1f}×"
        )


if __name__ == "__main__":
    main()
