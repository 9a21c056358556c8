"""mmfuse.evaluate: metrics match scikit-learn, figures are real PNGs, the report has its sections."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

from mmfuse.evaluate import (
    classification_metrics,
    format_table,
    multitask_metrics,
    plot_ablation,
    plot_confusion,
    plot_curves,
    plot_robustness,
    write_report,
)

LABELS = ["cat", "dog", "bird", "fish", "frog"]
HISTORY = [
    {
        "epoch": e,
        "train_loss": 1.0 / e,
        "val_loss": 1.2 / e,
        "val_accuracy": 1 - 0.5 / e,
        "lr": 1e-3,
    }
    for e in range(1, 6)
]
ABLATION = {"all": 0.91, "without audio": 0.84, "without image": 0.72, "image only": 0.8}
ROBUSTNESS = {
    "audio": {"levels": [30, 20, 10, 0], "accuracy": [0.9, 0.88, 0.8, 0.61], "unit": "dB SNR"},
    "image": {"levels": [0.0, 0.1, 0.3], "accuracy": [0.9, 0.85, 0.62], "unit": "noise std"},
}


@pytest.fixture
def predictions():
    """40 rows over 5 classes; class 4 ("frog") never occurs as a true label."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, size=40)
    proba = rng.dirichlet(np.ones(5), size=40)
    proba[np.arange(40), y_true] += 0.6  # better than chance, but not perfect
    proba /= proba.sum(axis=1, keepdims=True)
    return y_true, proba


def _is_json_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_json_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


# The reference balanced_accuracy_score warns because "frog" is predicted but never true.
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_equal_sklearn(predictions):
    y_true, proba = predictions
    y_pred = proba.argmax(axis=1)
    m = classification_metrics(y_true, proba=proba, labels=LABELS)
    everything = list(range(5))

    assert m["n_samples"] == 40 and m["n_missing"] == 0
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted"):
        kw = {"average": avg, "zero_division": 0}
        assert m[f"precision_{avg}"] == pytest.approx(precision_score(y_true, y_pred, **kw))
        assert m[f"recall_{avg}"] == pytest.approx(recall_score(y_true, y_pred, **kw))
        assert m[f"f1_{avg}"] == pytest.approx(f1_score(y_true, y_pred, **kw))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=everything, zero_division=0)
    for i, name in enumerate(LABELS):
        assert m["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
        )
    assert m["per_class"]["frog"]["support"] == 0
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=everything).tolist()
    # "frog" is absent from y_true: both need labels= to know there are 5 classes.
    assert m["top_k_accuracy"] == pytest.approx(
        {
            "top_1": top_k_accuracy_score(y_true, proba, k=1, labels=everything),
            "top_3": top_k_accuracy_score(y_true, proba, k=3, labels=everything),
        }
    )
    assert m["log_loss"] == pytest.approx(log_loss(y_true, proba, labels=everything))
    assert _is_json_plain(m)
    assert json.loads(json.dumps(m)) == m


def test_explicit_predictions_and_class_names():
    y_true = ["cat", "dog", "dog", "bird", "cat"]
    y_pred = ["cat", "dog", "cat", "bird", "bird"]
    by_name = classification_metrics(y_true, y_pred, labels=["cat", "dog", "bird"])
    by_index = classification_metrics(
        [0, 1, 1, 2, 0], [0, 1, 0, 2, 2], labels=["cat", "dog", "bird"]
    )
    assert by_name == by_index
    assert "top_k_accuracy" not in by_name and "log_loss" not in by_name
    assert by_name["accuracy"] == pytest.approx(0.6)


def test_accepts_torch_tensors():
    import torch

    y_true = torch.tensor([0, 1, -1, 2, 1])
    proba = torch.softmax(torch.randn(5, 3, requires_grad=True), dim=-1)  # float32, with grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. log_loss's "do not sum to one" on float32 rows
        m = classification_metrics(y_true, proba=proba, labels=["a", "b", "c"])
    labelled = proba.detach().double().numpy()[[0, 1, 3, 4]]
    labelled /= labelled.sum(axis=1, keepdims=True)
    expected = log_loss([0, 1, 2, 1], labelled, labels=[0, 1, 2])
    assert m["n_samples"] == 4 and m["log_loss"] == pytest.approx(expected, rel=1e-5)


def test_missing_true_labels_are_excluded(predictions):
    y_true, proba = predictions
    masked = y_true.copy()
    masked[::4] = -1
    masked[1] = -100  # PyTorch's default ignore_index is a missing label too
    keep = masked >= 0

    m = classification_metrics(masked, proba=proba, labels=LABELS)
    reference = classification_metrics(y_true[keep], proba=proba[keep], labels=LABELS)
    assert m["n_missing"] == int((~keep).sum())
    assert m["n_samples"] == reference["n_samples"] == int(keep.sum())
    assert {k: v for k, v in m.items() if k != "n_missing"} == {
        k: v for k, v in reference.items() if k != "n_missing"
    }

    none_labelled = classification_metrics([-1, -1], proba=proba[:2], labels=LABELS)
    assert none_labelled["n_samples"] == 0 and none_labelled["accuracy"] is None
    assert json.loads(json.dumps(none_labelled, allow_nan=False)) == none_labelled


def test_top_k_skips_trivial_k_and_binary_works():
    y_true = np.array([1, 1, 1, 0])  # class 0 is rare, binary task
    proba = np.array([[0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.8, 0.2]])
    m = classification_metrics(y_true, proba=proba, labels=["no", "yes"], top_k=(1, 3))
    assert set(m["top_k_accuracy"]) == {"top_1"}  # k=3 >= 2 classes is meaningless
    assert m["top_k_accuracy"]["top_1"] == pytest.approx(0.75)

    only_one_class = classification_metrics([1, 1], proba=proba[:2], labels=["no", "yes"])
    assert only_one_class["log_loss"] == pytest.approx(log_loss([1, 1], proba[:2], labels=[0, 1]))


def test_bad_inputs_name_the_problem(predictions):
    y_true, proba = predictions
    with pytest.raises(ValueError, match="not logits"):
        classification_metrics(y_true, proba=proba * 3, labels=LABELS)
    with pytest.raises(ValueError, match="out of range for 5 classes"):
        classification_metrics([0, 7], [0, 1], labels=LABELS)
    with pytest.raises(ValueError, match="known classes"):
        classification_metrics(["cat", "cow"], ["cat", "cat"], labels=LABELS)
    with pytest.raises(ValueError, match="neither"):
        classification_metrics(y_true, labels=LABELS)


def test_multitask(predictions):
    y_true, proba = predictions
    size_true = np.array([0, 1, -1, 1] * 10)
    size_proba = np.tile([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5], [0.9, 0.1]], (10, 1))
    result = multitask_metrics(
        {"species": (y_true, proba), "size": (size_true, size_proba)},
        labels={"species": LABELS, "size": ["small", "big"]},
    )
    assert list(result) == ["size", "species"]
    assert result["species"] == classification_metrics(y_true, proba=proba, labels=LABELS)
    assert result["size"]["n_missing"] == 10
    assert result["size"]["accuracy"] == pytest.approx(20 / 30)

    table = format_table(result)
    assert "== size ==" in table and "== species ==" in table and "frog" in table
    with pytest.raises(ValueError, match="no class names"):
        multitask_metrics({"species": (y_true, proba)}, labels={})


def test_format_table(predictions):
    y_true, proba = predictions
    m = classification_metrics(y_true, proba=proba, labels=LABELS)
    table = format_table(m)
    for text in ("accuracy", "f1 macro", "top-3 accuracy", "log loss", "support", *LABELS):
        assert text in table
    assert f"{m['accuracy']:.4f}" in table


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_plots_write_readable_pngs(tmp_path, predictions):
    y_true, proba = predictions
    cm = confusion_matrix(y_true, proba.argmax(axis=1), labels=range(5))
    paths = [
        plot_confusion(cm, LABELS, tmp_path / "cm.png"),
        plot_curves(HISTORY, tmp_path / "curves.png"),
        plot_ablation(ABLATION, tmp_path / "nested" / "ablation.png"),
        plot_robustness(
            {"audio": [(30, 0.9), (0, 0.6)], "video": [(0, 0.9), (50, 0.7)]},
            {"audio": "dB SNR", "video": "frame drop %"},
            tmp_path / "robustness.png",
        ),
    ]
    for path in paths:
        assert path.exists()
        width, height = _png_size(path)
        assert 300 <= width <= 4000 and 200 <= height <= 4000

    many = [f"class_{i}" for i in range(60)]
    width, height = _png_size(plot_confusion(np.eye(60, dtype=int), many, tmp_path / "big.png"))
    assert width <= 4000 and height <= 4000


def test_plots_leave_pyplot_alone(tmp_path):
    # A library that imports pyplot can switch a notebook's backend; check in a clean process.
    code = (
        "import sys\n"
        "from mmfuse.evaluate import plot_ablation\n"
        f"plot_ablation({{'all': 0.9, 'image only': 0.7}}, {str(tmp_path / 'a.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_write_report_with_every_section(tmp_path, predictions):
    y_true, proba = predictions
    metrics = classification_metrics(y_true, proba=proba, labels=LABELS)
    extra = {"checkpoint": "runs/exp1/best.pt", "seed": 0}
    report = write_report(
        tmp_path,
        metrics,
        history=HISTORY,
        ablation=ABLATION,
        robustness=ROBUSTNESS,
        title="exp1 evaluation",
        extra=extra,
    )
    assert report == tmp_path / "report.md"
    for name in ("metrics.json", "confusion.png", "curves.png", "ablation.png", "robustness.png"):
        assert (tmp_path / name).exists(), name
        if name.endswith(".png"):
            _png_size(tmp_path / name)

    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["metrics"] == metrics
    assert stored["history"] == HISTORY
    assert stored["ablation"] == ABLATION
    assert stored["robustness"] == ROBUSTNESS
    assert stored["extra"] == extra

    text = report.read_text()
    assert text.startswith("# exp1 evaluation")
    for heading in ("## Run details", "## Results", "## Training curves"):
        assert heading in text
    for heading in ("## Modality ablation", "## Robustness"):
        assert heading in text
    for link in ("confusion.png", "curves.png", "ablation.png", "robustness.png"):
        assert f"]({link})" in text
    assert "| without image | 0.7200 | -0.1900 |" in text
    assert "dB SNR" in text and "noise std" in text
    assert "runs/exp1/best.pt" in text
    assert f"{metrics['f1_macro']:.4f}" in text and "| frog |" in text


def test_write_report_only_given_sections(tmp_path, predictions):
    y_true, proba = predictions
    metrics = multitask_metrics(
        {"species": (y_true, proba), "size": (np.array([0, 1] * 20), np.full((40, 2), 0.5))},
        labels={"species": LABELS, "size": ["small", "big"]},
    )
    text = write_report(tmp_path, metrics).read_text()
    assert "## Results: species" in text and "## Results: size" in text
    for absent in ("Run details", "Training curves", "Modality ablation", "Robustness"):
        assert absent not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion_size.png",
        "confusion_species.png",
        "metrics.json",
        "report.md",
    ]
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"title", "metrics"}


def test_write_report_rejects_malformed_inputs(tmp_path, predictions):
    y_true, proba = predictions
    metrics = classification_metrics(y_true, proba=proba, labels=LABELS)
    with pytest.raises(ValueError, match="one number per setting"):
        write_report(tmp_path, metrics, ablation={"all": {"accuracy": 0.9}})
    with pytest.raises(ValueError, match="one accuracy per level"):
        write_report(
            tmp_path, metrics, robustness={"audio": {"levels": [0, 10], "accuracy": [0.5]}}
        )
    with pytest.raises(ValueError, match="classification_metrics"):
        write_report(tmp_path, {"accuracy": 0.9})
