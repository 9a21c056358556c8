"""How well a fitted detector separates normal from anomalous samples, and its report.

The manifest's label column holds `normal` or `anomaly`; an optional `kind` column (as the
generated surveillance set has: visual, acoustic, both) breaks the detection down by kind.
Per-input ablation scores each input's own z-score alone, against the fused score, which is
where a fused detector shows that each input misses the other's kind of anomaly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from mmfuse.anomaly.detector import NORMAL, as_manifest
from mmfuse.errors import ManifestError
from mmfuse.evaluate.plots import plot_ablation, plot_roc

ANOMALY = "anomaly"
KIND = "kind"


def anomaly_labels(manifest) -> np.ndarray:
    """Per row: 0 normal, 1 anomaly, -1 no label; any other value is a ManifestError."""
    if not manifest.label:
        raise ManifestError(
            f"{manifest.source} has no label column; evaluation needs one (named label) "
            f"holding {NORMAL} or {ANOMALY} per row"
        )
    out = np.full(len(manifest), -1)
    for row in range(len(manifest)):
        value = manifest.value(row, manifest.label)
        if value is None:
            continue
        if str(value) not in (NORMAL, ANOMALY):
            raise ManifestError(
                f"{manifest.source}: row {row}, column {manifest.label!r}: {value!r} is neither "
                f"{NORMAL!r} nor {ANOMALY!r}; relabel the row"
            )
        out[row] = int(str(value) == ANOMALY)
    if not ((out == 0).any() and (out == 1).any()):
        raise ManifestError(
            f"{manifest.source}: column {manifest.label!r} needs both {NORMAL} and {ANOMALY} "
            "rows to measure detection; add the missing kind"
        )
    return out


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    keep = ~np.isnan(score)
    if len(set(y[keep].tolist())) < 2:
        return None
    return float(roc_auc_score(y[keep], score[keep]))


def anomaly_metrics(
    table: pd.DataFrame, y: np.ndarray, threshold: float, target: float, kinds=None
) -> dict:
    """Metrics of a score table (`score`, `anomaly`, `score_<input>`) against labels `y`."""
    labelled = (y >= 0) & table["score"].notna().to_numpy()
    t, y = table[labelled], y[labelled]
    score, flagged = t["score"].to_numpy(float), t["anomaly"].to_numpy(bool)
    tp, fp = int((flagged & (y == 1)).sum()), int((flagged & (y == 0)).sum())
    tn, fn = int((~flagged & (y == 0)).sum()), int((~flagged & (y == 1)).sum())
    inputs = [c[len("score_") :] for c in t.columns if c.startswith("score_")]
    ablation = {"fused": _auc(y, score)}
    for name in inputs:
        ablation[f"{name} only"] = _auc(y, t[f"score_{name}"].to_numpy(float))
    metrics = {
        "n": len(y),
        "n_normal": int((y == 0).sum()),
        "n_anomaly": int((y == 1).sum()),
        "unscored": int((~table["score"].notna()).sum()),
        "roc_auc": ablation["fused"],
        "pr_auc": float(average_precision_score(y, score)),
        "threshold": threshold,
        "target_false_alarm": target,
        "false_alarm_rate": fp / max(fp + tn, 1),
        "detection_rate": tp / max(tp + fn, 1),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "ablation": ablation,
    }
    if kinds is not None:
        metrics["by_kind"] = _by_kind(t, y, np.asarray(kinds, dtype=object)[labelled], inputs)
    return metrics


def _by_kind(t: pd.DataFrame, y: np.ndarray, kinds: np.ndarray, inputs: list[str]) -> dict:
    """Per anomaly kind, against the normal rows: detection at the threshold, ROC-AUC per score."""
    out = {}
    for kind in sorted({str(k) for k, label in zip(kinds, y) if label == 1 and k is not None}):
        rows = (y == 0) | (kinds.astype(str) == kind)
        sub, yy = t[rows], y[rows]
        entry = {"n": int((yy == 1).sum())}
        entry["detection_rate"] = float(sub["anomaly"].to_numpy(bool)[yy == 1].mean())
        entry["roc_auc"] = {"fused": _auc(yy, sub["score"].to_numpy(float))}
        for name in inputs:
            entry["roc_auc"][name] = _auc(yy, sub[f"score_{name}"].to_numpy(float))
        out[kind] = entry
    return out


def evaluate_detector(detector, X, out_dir=None, *, root=None) -> dict:
    """`anomaly_metrics` of a fitted detector on labelled `X`; with `out_dir`, metrics.json,
    scores.csv, roc.png, ablation.png and report.md there."""
    manifest = as_manifest(X, modalities=detector.column_roles(), root=root)
    y = anomaly_labels(manifest)
    table = detector.score_table(manifest)
    kinds = manifest.frame[KIND].tolist() if KIND in manifest.frame else None
    metrics = anomaly_metrics(table, y, detector.threshold_, detector.false_alarm, kinds)
    if out_dir is not None:
        write_anomaly_report(Path(out_dir), metrics, table, y)
    return metrics


def write_anomaly_report(out: Path, metrics: dict, table: pd.DataFrame, y: np.ndarray) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    curves = {}
    for column in ["score", *(c for c in table.columns if c.startswith("score_"))]:
        keep = (y >= 0) & table[column].notna().to_numpy()
        if len(set(y[keep].tolist())) == 2:
            fpr, tpr, _ = roc_curve(y[keep], table[column].to_numpy(float)[keep])
            name = "fused" if column == "score" else column[len("score_") :]
            curves[f"{name} (AUC {roc_auc_score(y[keep], table[column][keep]):.3f})"] = (fpr, tpr)
    plot_roc(curves, out / "roc.png", title="ROC: normal vs anomaly")
    ablation = {k: v for k, v in metrics["ablation"].items() if v is not None}
    plot_ablation(ablation, out / "ablation.png", metric="ROC-AUC", title="Per-input ablation")
    c = metrics["confusion"]
    lines = [
        "# mmfuse anomaly evaluation",
        "",
        f"{metrics['n']} labelled rows ({metrics['n_normal']} normal, {metrics['n_anomaly']} "
        f"anomalies), {metrics['unscored']} unscored.",
        "",
        "| metric | value |",
        "|---|---|",
        *(
            f"| {k} | {_fmt(metrics[k])} |"
            for k in ("roc_auc", "pr_auc", "false_alarm_rate", "target_false_alarm")
        ),
        f"| detection_rate | {_fmt(metrics['detection_rate'])} |",
        "",
        f"Confusion at threshold {metrics['threshold']:.3f}: {c['tn']} true normal, {c['fp']} "
        f"false alarms, {c['fn']} missed, {c['tp']} detected.",
        "",
        "## Per-input ablation (ROC-AUC)",
        "",
        *(f"- {k}: {_fmt(v)}" for k, v in metrics["ablation"].items()),
        *_kind_lines(metrics.get("by_kind", {})),
        "",
        "![ROC](roc.png)",
        "",
        "![ablation](ablation.png)",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _kind_lines(by_kind: dict) -> list[str]:
    if not by_kind:
        return []
    lines = [
        "",
        "## By kind",
        "",
        "| kind | n | detected | ROC-AUC per score |",
        "|---|---|---|---|",
    ]
    for kind, e in by_kind.items():
        aucs = ", ".join(f"{k} {_fmt(v)}" for k, v in e["roc_auc"].items())
        lines.append(f"| {kind} | {e['n']} | {_fmt(e['detection_rate'])} | {aucs} |")
    return lines


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
