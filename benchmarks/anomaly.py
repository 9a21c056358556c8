"""Audio-visual anomaly detection on the generated surveillance scenes: does fusing the frames
and the audio track beat each alone, and which scorer should be the default?

Generates `mmfuse datasets make surveillance` (cached under --data), then per scorer (knn,
gaussian) fits `AnomalyDetector` on the normal train split with the val split as held-out
normal data, and prints on the test split: ROC-AUC of the fused score and of each input's own
score (the per-input ablation: a one-input detector scores exactly that, since each input's
scorer is fitted on its own), PR-AUC, the false-alarm rate on the test normal clips against
the target, and per anomaly kind the ROC-AUC of each score. Features come from the feature
cache after the first scorer, so the second scorer's fit costs its statistics only.

    python benchmarks/anomaly.py                        # 400 clips, pretrained frozen encoders
    python benchmarks/anomaly.py --samples 1000 --false-alarm 0.05
    python benchmarks/anomaly.py --samples 24 --encoders '{"audio": "mel-cnn", ...}'  # a check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mmfuse import AnomalyDetector
from mmfuse.anomaly import SCORERS
from mmfuse.data.cache import default_cache_dir, manifest_paths, read_marker
from mmfuse.data.surveillance import MARKER, make_surveillance


def dataset(args) -> dict[str, Path]:
    root = Path(args.data or default_cache_dir() / f"surveillance-{args.samples}-{args.seed}")
    marker = read_marker(root / MARKER)
    if marker and marker.get("samples") == args.samples and marker.get("seed") == args.seed:
        return manifest_paths(root)
    start = time.perf_counter()
    paths = make_surveillance(root, samples=args.samples, seed=args.seed)
    print(f"generated {args.samples} clips in {time.perf_counter() - start:.0f} s under {root}")
    return paths


def run(scorer: str, paths: dict[str, Path], args) -> dict:
    detector = AnomalyDetector(
        scorer=scorer,
        false_alarm=args.false_alarm,
        encoders=json.loads(args.encoders) if args.encoders else None,
        device=args.device,
        workers=args.workers,
    )
    start = time.perf_counter()
    detector.fit(paths["train"], val=paths["val"])
    fitted = time.perf_counter()
    metrics = detector.evaluate(paths["test"])
    metrics["fit_s"], metrics["evaluate_s"] = fitted - start, time.perf_counter() - fitted
    metrics["encoders"] = {n: s.encoder for n, s in detector.inputs_.items()}
    metrics["notes"] = detector.notes_
    return metrics


def show(results: dict[str, dict], target: float) -> None:
    first = next(iter(results.values()))
    inputs = [k for k in first["ablation"] if k != "fused"]
    print(f"encoders: {first['encoders']}")
    head = f"{'scorer':<10} {'fused':>7} " + " ".join(f"{n:>18}" for n in inputs)
    print(head + f" {'PR-AUC':>7} {'FA test':>8} {'target':>7} {'fit s':>6}")
    for scorer, m in results.items():
        cells = " ".join(f"{_f(m['ablation'][n]):>18}" for n in inputs)
        print(
            f"{scorer:<10} {_f(m['roc_auc']):>7} {cells} {_f(m['pr_auc']):>7} "
            f"{m['false_alarm_rate']:>8.3f} {target:>7g} {m['fit_s']:>6.0f}"
        )
    print(
        "\nROC-AUC per anomaly kind (each kind vs the test normal clips), detection at threshold:"
    )
    for scorer, m in results.items():
        for kind, e in m["by_kind"].items():
            aucs = "  ".join(f"{n} {_f(v)}" for n, v in e["roc_auc"].items())
            print(
                f"  {scorer:<9} {kind:<9} n={e['n']:<4} detected {e['detection_rate']:.2f}  {aucs}"
            )
    for scorer, m in results.items():
        for note in m["notes"]:
            print(f"note ({scorer}): {note}")
        c = m["confusion"]
        print(f"{scorer}: test normal {c['tn'] + c['fp']}, false alarms {c['fp']}")


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=400, help="clips in all (default: 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="dataset folder (default: mmfuse's cache)")
    p.add_argument("--false-alarm", type=float, default=0.01)
    p.add_argument("--scorers", default=",".join(SCORERS), help="comma-separated")
    p.add_argument("--encoders", help="JSON encoder choices (default: the preset's pretrained)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="feature extraction loader workers")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    paths = dataset(args)
    results = {s: run(s, paths, args) for s in args.scorers.split(",")}
    show(results, args.false_alarm)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
