"""Ensembles and calibration: members against their weighted ensemble, and the serving cost.

    .venv/bin/python benchmarks/ensemble.py --data avdigits                  # 1,500 samples
    .venv/bin/python benchmarks/ensemble.py --data digits,speech-kind --preset medium
    .venv/bin/python benchmarks/ensemble.py --latency [--requests 200]       # HTTP p50, 1 vs 3

Scores (`--data`): per dataset, `MultimodalClassifier(ensemble={"fusion": [...]})` trains one
member per `--fusion` method in turn on the training split; the validation split picks each
member's best epoch, fits its temperature, weighs the members (greedy selection, log loss) and
fits the ensemble's temperature. The test split then scores each member and the ensemble:
accuracy, log loss, ECE (15 bins) after and before temperature scaling. `avdigits` is
`ensure_avdigits(--samples)`, with the demo's small encoders; any other name is a real-media
task (`mmfuse.data.real.REAL_TASKS`, `--size`), with `--preset`'s encoders; `--vary
image=efficientnet-lite0,efficientnet-lite2` multiplies the members by those encoders of the
task's modality (members that differ by what they see, not only by their fusion head).

Latency (`--latency`): an ensemble of 3 fused members (attention, gated, late; the demo's
encoders, 1 epoch on 60 avdigits samples: accuracy is irrelevant here) is saved with equal
weights; `mmfuse serve` of the ensemble folder and of one member's folder (`members/<name>/`,
itself a model folder) each answer `--requests` sequential `POST /predict` of one sample with
its 4 inputs (image, audio, video, text) after 5 warm-ups. Printed: p50/p90 ms of each, and
the ratio of the p50s (the target: under 3). The load average is printed at start and end: on
a shared machine a high one inflates both, the ratio less so. `--latency --latency-preset
medium --folds 5`: the same with the `medium` preset's frozen pretrained encoders and each
member a bag of 5 fold models (15 models; identical frozen encoders run once per request),
against one fold model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

FUSIONS = "attention,gated,late"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def splits(name: str, args) -> tuple[dict, dict | None]:
    """The manifests by split, and the encoders to use (None: the preset's)."""
    if name == "avdigits":
        from mmfuse.data.avdigits import ensure_avdigits
        from mmfuse.demo import AUDIO, IMAGE, TEXT, VIDEO

        encoders = {
            m: {"encoder": e, "options": dict(o)}
            for m, (e, o) in {"image": IMAGE, "audio": AUDIO, "video": VIDEO, "text": TEXT}.items()
        }
        return ensure_avdigits(samples=args.samples, seed=0), encoders
    from mmfuse.data.real import ensure_real_task

    return ensure_real_task(name, size=args.size, seed=args.draw), None


def varied(axes: list[str], manifest) -> dict:
    """`--vary`'s axes for the modalities this task's manifest has (its columns are named by
    modality), so one run can vary the image encoders of digits and leave speech-kind alone."""
    import pandas as pd

    columns = set(pd.read_csv(manifest, nrows=0).columns)
    return {k: v for k, _, v in (a.partition("=") for a in axes) if k in columns}


def score_dataset(name: str, args, folds: int = 0) -> list[tuple]:
    """`[(model, weight, accuracy, log loss, ECE, ECE before)]`, members first; `folds`: each
    member a bag of that many fold models (k-fold bagging over train + val)."""
    from mmfuse.classifier import MultimodalClassifier

    paths, encoders = splits(name, args)
    # avdigits: the demo's small encoders and its training settings; a real task: what
    # `MultimodalClassifier(preset=...)` does by default (epochs, fusion width, augmentation).
    demo = encoders is not None
    options = {"augment": False, "weight_decay": 0.05} if demo else {}
    clf = MultimodalClassifier(
        preset=None if demo else args.preset,
        encoders=encoders,
        epochs=args.epochs,
        lr=args.lr or (3e-3 if demo else 1e-3),
        batch_size=32,
        device="cpu",
        verbose=False,
        fusion_dim=64 if demo else 256,
        ensemble={
            "fusion": args.fusion.split(","),
            "seeds": args.seeds,
            "folds": folds,
            "jobs": args.jobs,
            **({} if demo else varied(args.vary, paths["train"])),
        },
        train_options={"tensorboard": False, **options},
        out_dir=Path(tempfile.mkdtemp(prefix=f"mmfuse-ensemble-{name}-")),
    )
    started = time.perf_counter()
    clf.fit(paths["train"], val=paths["val"])
    took = time.perf_counter() - started
    metrics = clf.evaluate(paths["test"], ablation=False)
    members = clf.last_evaluation_["members"]
    rows = [
        (n, clf.weights_[n], m["accuracy"], m["log_loss"], m["ece"], m["ece_uncalibrated"])
        for n, m in members.items()
    ]
    if args.dump:
        dump_members(clf, paths, Path(args.dump) / f"{name}{f'-folds{folds}' if folds else ''}.npz")
    e = metrics
    rows.append(("ensemble", 1.0, e["accuracy"], e["log_loss"], e["ece"], e["ece_uncalibrated"]))
    how = f"{folds}-fold bagged members" if folds else "members trained once"
    how += f", jobs={args.jobs}"
    print(f"\n## {name}, {how} (test split; training {took:.0f} s, load {loadavg()})\n")
    print(
        f"ensemble ECE with its members calibrated, its own T at 1: {e['ece_members_calibrated']:.4f}"
    )
    print("| model | weight | accuracy | log loss | ECE | ECE uncalibrated (every T at 1) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.4f} |")
    best = max(rows[:-1], key=lambda r: r[2])
    print(
        f"\nensemble accuracy {'>=' if rows[-1][2] >= best[2] else '<'} best member's "
        f"({best[0]}); log loss {'lower' if rows[-1][3] < min(r[3] for r in rows[:-1]) else 'NOT lower'} "
        "than every member's"
    )
    print_validation_pick(clf.validation_, rows)
    return rows


def print_summary(summary: list[tuple]) -> None:
    """Per task and way of training: the ensemble against its best member on test, and
    against the best member trained once (the first `--folds` value's members)."""
    print("\n## Summary (test split)\n")
    print("| task | members | best member: accuracy, log loss | ensemble | ensemble − best |")
    print("|---|---|---|---|---|")
    for name, folds, rows in summary:
        acc = max(r[2] for r in rows[:-1])
        loss = min(r[3] for r in rows[:-1])
        e = rows[-1]
        how = f"{folds}-fold bags" if folds else "trained once"
        print(f"| {name} | {how} | {acc:.4f}, {loss:.4f} | {e[2]:.4f}, {e[3]:.4f} | "
              f"{e[2] - acc:+.4f}, {e[3] - loss:+.4f} |")  # fmt: skip


def print_validation_pick(validation: dict, rows: list[tuple]) -> None:
    """The member the validation split ranks first: the one model a user would have kept
    without an ensemble (the best on the test split is known only after the fact)."""
    scores = validation.get("members")
    if not scores:
        return
    pick = min if validation["metric"] == "log_loss" else max
    name = pick(scores, key=scores.get)
    member = next(r for r in rows if r[0] == name)
    ens = rows[-1]
    print(
        f"the member validation ranks first: {name} (test accuracy {member[2]:.4f}, log loss "
        f"{member[3]:.4f}); the ensemble {ens[2] - member[2]:+.4f} accuracy, "
        f"{ens[3] - member[3]:+.4f} log loss against it"
    )


def dump_members(clf, paths: dict, file: Path) -> None:
    """Each member's (calibrated) probabilities on the validation and test splits with the
    labels, `<split>_<member>` and `<split>_y`: to compare ways of weighing the same members
    offline (`benchmarks/selection.py`)."""
    import pandas as pd

    ensemble, arrays = clf.model_, {}
    classes = [str(c) for c in clf.labels_[clf.task_]]
    try:
        for split in ("val", "test"):
            labels = pd.read_csv(paths[split])[clf.task_].astype(str)
            arrays[f"{split}_y"] = np.array([classes.index(v) for v in labels])
            for member in ensemble.members:
                clf.model_ = ensemble.only(member)
                arrays[f"{split}_{member}"] = clf.predict_proba(paths[split])
    finally:
        clf.model_ = ensemble
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(file, **arrays)


# ---------------------------------------------------------------------------------- latency
def latency_models(root: Path, args) -> tuple[Path, Path, dict]:
    """`(ensemble folder, one member's folder, httpx files of one 4-input sample)`. With
    `--latency-preset`, that preset's encoders; with `--folds K` (one value), each member a
    bag of K fold models and "one member" one fold model."""
    import pandas as pd

    from mmfuse.classifier import MultimodalClassifier
    from mmfuse.data.avdigits import ensure_avdigits
    from mmfuse.demo import AUDIO, IMAGE, TEXT, VIDEO

    paths = ensure_avdigits(samples=60, seed=0)
    encoders = {
        m: {"encoder": e, "options": dict(o)}
        for m, (e, o) in {"image": IMAGE, "audio": AUDIO, "video": VIDEO, "text": TEXT}.items()
    }
    folds = int(args.folds.split(",")[-1])
    clf = MultimodalClassifier(
        encoders=None if args.latency_preset else encoders,
        preset=args.latency_preset,
        epochs=1,
        fusion_dim=64,
        device="cpu",
        verbose=False,
        ensemble={"fusion": FUSIONS.split(","), "folds": folds},
        train_options={"tensorboard": False, "augment": False},
        out_dir=root / "run",
    )
    clf.fit(paths["train"], val=paths["val"])
    clf.model_.weights = dict.fromkeys(clf.model_.members, 1 / 3)  # all three run
    folder = clf.save(root / "model")
    row = pd.read_csv(paths["test"]).iloc[0]
    base = Path(paths["test"]).parent
    files = {
        m: (Path(row[m]).name, (base / row[m]).read_bytes()) for m in ("image", "audio", "video")
    }
    files["text"] = (None, str(row["text"]))
    single = folder / "members" / "attention-seed0"
    return folder, single / "members" / "fold0" if folds else single, files


def p50_of(model: Path, files: dict, n: int, root: Path) -> list[float]:
    from serve_load import free_port, sequential, start_server

    port = free_port()
    args = argparse.Namespace(header_timeout=10, body_timeout=30, clients=1, slow_clients=0,
                              torch_threads=None)  # fmt: skip
    server = start_server(model, port, 64 * 2**20, args, root / f"{model.name}.log")
    try:
        return sequential(f"http://127.0.0.1:{port}", files, n)
    finally:
        server.terminate()
        server.wait(timeout=30)


def latency(args) -> None:
    print(f"load average at start: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="mmfuse-ensemble-latency-") as tmp:
        root = Path(tmp)
        ensemble, single, files = latency_models(root, args)
        times = {}
        for name, folder in (("single", single), ("ensemble of 3", ensemble)):
            times[name] = p50_of(folder, files, args.requests, root)
        size, unshared = folder_mb(ensemble), weights_mb(ensemble)
    print("\n| model | p50 ms | p90 ms |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {np.percentile(t, 50):.1f} | {np.percentile(t, 90):.1f} |")
    ratio = np.percentile(times["ensemble of 3"], 50) / np.percentile(times["single"], 50)
    print(f"\nensemble p50 / single p50 = {ratio:.2f} (target < 3)")
    print(f"ensemble folder {size:.1f} MB (its models' weights, a copy each: {unshared:.1f} MB)")
    print(f"load average at end: {loadavg()}")


def folder_mb(folder: Path) -> float:
    """What a model folder weighs: its weights and configs (not a run's checkpoints)."""
    files = [*folder.rglob("*.safetensors"), *folder.rglob("*.json")]
    return sum(f.stat().st_size for f in files if not any(p.name[:5] in ("ckpt-", "best-")
               for p in f.parents)) / 2**20  # fmt: skip


def weights_mb(folder: Path) -> float:
    """The weights of every model in an ensemble folder, as if each kept its own copy."""
    from mmfuse.model.saved import load_model

    model, _, _ = load_model(folder)
    tensors = [t for _, leaf, _ in model.leaves() for t in leaf.state_dict().values()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data", default="avdigits", help="avdigits and/or real task names, comma-separated"
    )
    p.add_argument("--samples", type=int, default=1500, help="avdigits size")
    p.add_argument("--size", default="small", help="real task size: small or large")
    p.add_argument("--draw", type=int, default=0, help="real task: which draw of its rows (seed)")
    p.add_argument("--preset", default="medium", help="real tasks' encoders (fast, medium, best)")
    p.add_argument("--fusion", default=FUSIONS, help="one member per fusion method")
    p.add_argument("--seeds", type=int, default=1, help="members per fusion method (seeds)")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="MODALITY=ENCODERS",
        help="another axis of members, e.g. image=efficientnet-lite0,efficientnet-lite2 "
        "(a real task's modality; with --preset medium, pretrained encoders)",
    )
    p.add_argument("--epochs", type=int, help="default: the preset's (or the demo encoders') own")
    p.add_argument(
        "--lr", type=float, help="default: 3e-3 avdigits, 1e-3 (MultimodalClassifier's) otherwise"
    )
    p.add_argument(
        "--folds",
        default="0",
        help="comma-separated: 0 = members trained once on train, weighed on val; K = "
        "k-fold bagged members over train + val (e.g. 0,5 compares both in one run)",
    )
    p.add_argument("--jobs", type=int, default=1, help="members or fold models trained at once")
    p.add_argument("--dump", help="folder: save each member's val/test probabilities there")
    p.add_argument("--latency", action="store_true", help="measure serving p50, 1 model vs 3")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument(
        "--latency-preset",
        help="--latency with this preset's encoders (default: the demo's small ones)",
    )
    args = p.parse_args()
    if args.latency:
        latency(args)
        return 0
    print(f"load average at start: {loadavg()}")
    summary = []
    for name in args.data.split(","):
        for folds in (int(k) for k in args.folds.split(",")):
            rows = score_dataset(name.strip(), args, folds)
            summary.append((name.strip(), folds, rows))
    if len(summary) > 1:
        print_summary(summary)
    print(f"\nload average at end: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
