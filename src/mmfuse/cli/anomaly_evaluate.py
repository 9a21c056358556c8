"""`mmfuse anomaly evaluate DIR MANIFEST`: AnomalyDetector.evaluate, summary and report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmfuse.cli._anomaly import add_detector_dir, load_detector
from mmfuse.cli.common import EXIT_OK, add_device_flag, stem


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_detector_dir(p)
    p.add_argument("manifest", help="manifest with a label column of normal/anomaly")
    p.add_argument("--out", metavar="DIR", help="report folder (default: DIR/eval-<stem>)")
    add_device_flag(p, "cpu")


def run(args: argparse.Namespace) -> int:
    """Measure a detector on labelled samples: ROC-AUC, PR-AUC, confusion, per-input ablation.

    The label column holds normal or anomaly; a `kind` column, when there is one, breaks the
    detection down by kind. metrics.json, report.md, roc.png and ablation.png go to --out.

    examples:
      mmfuse anomaly evaluate runs/surv data/surv/test.csv
    """
    detector = load_detector(args.detector_dir, args.device)
    out = Path(args.out) if args.out else Path(args.detector_dir) / f"eval-{stem(args.manifest)}"
    m = detector.evaluate(args.manifest, out)
    c = m["confusion"]
    print(f"ROC-AUC {_f(m['roc_auc'])}  PR-AUC {_f(m['pr_auc'])}")
    print(
        f"at threshold {m['threshold']:.3f}: false-alarm rate {m['false_alarm_rate']:.3f} "
        f"(target {m['target_false_alarm']:g}), detection rate {m['detection_rate']:.3f} "
        f"[tn {c['tn']} fp {c['fp']} fn {c['fn']} tp {c['tp']}]"
    )
    for name, auc in m["ablation"].items():
        print(f"  {name:<24} ROC-AUC {_f(auc)}")
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return EXIT_OK


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
