"""k-fold bagged ensembles (`--ensemble folds=K`): folds, out-of-fold predictions, the nested
folder, resume, and prediction through the classifier, the Predictor and ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmfuse.classifier import MultimodalClassifier
from mmfuse.data.manifest import read_manifest
from mmfuse.data.synthetic import make_shapes
from mmfuse.infer.engine import PredictOptions, predict_dataset
from mmfuse.model.config import ConfigError, FusionConfig
from mmfuse.model.ensemble import EnsembleModel
from mmfuse.model.saved import load_model
from mmfuse.train.ensemble import Member, ensemble_dataset, train_ensemble
from mmfuse.train.ensemble_spec import parse_ensemble
from mmfuse.train.folds import fold_rows, pool_rows
from train_helpers import quick_config, state_dicts_equal, tiny_classifier, tiny_model_config

FOLDS = 3


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds")
    make_shapes(root / "train", 5, 3, seed=0)
    make_shapes(root / "val", 3, 3, seed=1)
    make_shapes(root / "test", 2, 3, seed=2)
    return root, *(read_manifest(root / s / "manifest.csv") for s in ("train", "val", "test"))


def _members(classes):
    late = tiny_model_config({"label": classes}, fusion=FusionConfig("late", 32))
    return [
        Member("attention-seed0", tiny_model_config({"label": classes}), quick_config(seed=0)),
        Member("late-seed0", late, quick_config(seed=0)),
    ]


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def bagged(shapes):
    """A 3-fold ensemble killed while training its second member's second fold, resumed."""
    root, train, val, test = shapes
    members = _members(train.classes["label"])
    seen: list[str] = []

    def kill(message: str) -> None:
        seen.append(message)
        if message.startswith("late-seed0 fold1/3: training"):
            raise Killed

    with pytest.raises(Killed):
        train_ensemble(train, members, root / "run", val=val, test=test, folds=FOLDS, log=kill)
    log: list[str] = []
    run = train_ensemble(
        train, members, root / "run", val=val, test=test, folds=FOLDS, resume=True, log=log.append
    )
    return root, train, val, test, members, run, log


def test_folds_cover_every_pooled_row_once_and_keep_the_classes_apart(shapes):
    _, train, val, _ = shapes
    pool = pool_rows(train, val)
    assert len(pool) == len(train) + len(val)
    held = fold_rows(pool, FOLDS, seed=0)
    assert sorted(np.concatenate(held).tolist()) == list(range(len(pool)))
    labels = pool.frame["label"].to_numpy()
    for part in held:  # stratified: each class's rows spread evenly over the folds
        counts = [int((labels[part] == c).sum()) for c in train.classes["label"]]
        assert max(counts) - min(counts) <= 1
    assert [h.tolist() for h in fold_rows(pool, FOLDS, seed=0)] == [h.tolist() for h in held]


def test_a_bad_folds_value_is_one_sentence():
    with pytest.raises(ConfigError, match="folds >= 2"):
        parse_ensemble("folds=1")
    spec = parse_ensemble(["folds=5"])
    assert spec.folds == 5 and spec.to_dict() == {"seeds": 1, "folds": 5}
    assert [m.name for m in spec.members("gated", None, 0)] == ["gated-seed0"]  # one bag is fine


def test_each_member_is_a_bag_of_fold_models_resumed_where_it_stopped(bagged):
    *_, run, log = bagged
    assert any(line.startswith("attention-seed0 fold2/3: done before") for line in log)
    assert any(line.startswith("late-seed0 fold0/3: done before") for line in log)
    assert any(line.startswith("late-seed0 fold1/3: training") for line in log)
    for name in ("attention-seed0", "late-seed0"):
        bag = run.model.members[name]
        assert isinstance(bag, EnsembleModel)
        assert list(bag.members) == ["fold0", "fold1", "fold2"]
        assert bag.weights == pytest.approx(dict.fromkeys(bag.members, 1 / 3))
    folds = run.model.members["late-seed0"].members
    assert state_dicts_equal(folds["fold0"].state_dict(), folds["fold1"].state_dict())  # differ


def test_weights_come_from_out_of_fold_predictions_of_every_pooled_row(bagged):
    root, train, val, *_, run, log = bagged
    assert run.validation["rows"] == "out-of-fold rows"
    assert sum(run.model.weights.values()) == pytest.approx(1.0)
    assert any("on out-of-fold rows" in line for line in log)
    # Each fold model's saved predictions are its own held-out rows, as it predicts them now.
    pool = pool_rows(train, val)
    held = fold_rows(pool, FOLDS, seed=0)
    fold_dir = root / "run" / "members" / "late-seed0" / "members" / "fold1"
    saved = np.load(fold_dir / "oof.npz", allow_pickle=False)
    assert sorted(saved["rows"].tolist()) == sorted(held[1].tolist())
    # A finished fold keeps its model folder, not its checkpoints (copies of every weight).
    assert not [p.name for p in fold_dir.iterdir() if p.name.startswith(("ckpt-", "best-"))]
    model, config, _ = load_model(fold_dir)
    model.set_temperatures(dict.fromkeys(model.tasks, 1.0))
    part = pool_rows(train, val)
    part = type(part)(**{**part.__dict__, "frame": part.frame.iloc[held[1]].reset_index(drop=True)})
    # As the trainer predicted them: at its precision (bf16 where the CPU has it, whose
    # rounding of logits / T the saved T = 1 probabilities carry: hence 2e-3).
    settled = quick_config().for_device(torch.device("cpu"))
    options = PredictOptions(
        batch_size=settled.batch_size,
        precision=settled.precision,
        channels_last=settled.channels_last,
    )
    out = predict_dataset(model, ensemble_dataset(part, model, config, 0), options)
    np.testing.assert_allclose(out["proba"]["all"]["label"], saved["raw/label"], atol=2e-3)


def test_the_report_is_on_test_with_each_bag_beside_the_ensemble(bagged):
    root = bagged[0]
    saved = json.loads((root / "run" / "metrics.json").read_text())
    assert set(saved["members"]) == {"attention-seed0", "late-seed0"}
    for metrics in [saved["metrics"], *saved["members"].values()]:
        assert {"accuracy", "log_loss", "ece", "ece_uncalibrated"} <= set(metrics)
    assert "out-of-fold rows" in (root / "run" / "report.md").read_text()


def test_the_nested_folder_loads_and_predicts_through_every_path(bagged, tmp_path):
    from mmfuse.infer.predictor import Predictor
    from mmfuse.ship.onnx import export_onnx
    from mmfuse.ship.runtime import onnx_matches_torch

    root, *_, run, _ = bagged
    clf = MultimodalClassifier(ensemble=["folds=3", "fusion=attention,late"])
    clf._set_fitted(run.model, run.config, quick_config())
    folder = clf.save(tmp_path / "model")
    active = sorted(run.model.active())
    assert sorted(p.name for p in (folder / "members").iterdir()) == active
    for name in active:
        assert (folder / "members" / name / "members" / "fold2" / "model.safetensors").is_file()
    loaded = MultimodalClassifier.load(folder)
    data = root / "test" / "manifest.csv"
    np.testing.assert_allclose(loaded.predict_proba(data), clf.predict_proba(data), atol=1e-6)
    frame = read_manifest(data).frame.head(3)
    samples = [
        {
            "image": str(root / "test" / r.image),
            "audio": str(root / "test" / r.audio),
            "text": r.text,
        }
        for r in frame.itertuples()
    ]
    samples[2]["audio"] = None
    out = Predictor(folder).predict(samples)
    assert sum(out[0].probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    summary = export_onnx(folder, tmp_path / "bagged.onnx")
    assert onnx_matches_torch(folder, summary["path"], samples) < 1e-4


def test_without_a_test_split_the_report_is_out_of_fold(shapes, tmp_path):
    root, *_ = shapes
    clf = tiny_classifier(tmp_path / "run", ensemble=["fusion=attention,late", "folds=2"])
    clf.fit(root / "train" / "manifest.csv", val=root / "val" / "manifest.csv")
    assert clf.validation_["rows"] == "out-of-fold rows"
    metrics = clf.evaluation_["metrics"]
    assert {"accuracy", "log_loss", "ece", "ece_uncalibrated"} <= set(metrics)
    assert set(clf.evaluation_["members"]) == {"attention-seed0", "late-seed0"}
    assert "out-of-fold" in (tmp_path / "run" / "report.md").read_text()
    again = MultimodalClassifier.load(clf.save(tmp_path / "model"))
    assert again.get_params()["ensemble"] == {
        "fusion": ["attention", "late"],
        "seeds": 1,
        "folds": 2,
    }


def test_identical_frozen_encoders_run_once_and_predict_the_same(bagged):
    """Every fold model of a frozen pretrained encoder holds the same encoder: the ensemble
    encodes each input once per distinct encoder, and predicts what its models predict."""
    import copy

    root, *_, run, _ = bagged
    model = copy.deepcopy(run.model).eval()
    leaves = list(model.leaves())
    first = leaves[0][1].encoders["image"].state_dict()
    calls = []
    for prefix, leaf, _route in leaves:
        encoder = leaf.encoders["image"]
        encoder.load_state_dict(first)  # as a frozen pretrained encoder would be everywhere
        for method in ("forward", "forward_tokens"):
            original = getattr(encoder, method)

            def counted(*args, _original=original, _prefix=prefix, **kwargs):
                calls.append(_prefix)
                return _original(*args, **kwargs)

            setattr(encoder, method, counted)
    for part in model.tempered_parts():
        part.set_temperatures(dict.fromkeys(part.tasks, 1.0))
    test = read_manifest(root / "test" / "manifest.csv")
    data = ensemble_dataset(test, model, run.config, 0)
    got = predict_dataset(model, data, PredictOptions(batch_size=64))["proba"]["all"]["label"]
    tokens = {getattr(leaf.fusion, "uses_tokens", False) for _, leaf, _ in leaves}
    assert len(calls) == len(tokens)  # one batch: one call per kind of output asked for
    want = 0.0
    for member, bag in model.members.items():
        for fold in bag.members:
            alone = predict_dataset(bag.members[fold], data, PredictOptions(batch_size=64))
            want = want + model.weights[member] / len(bag.members) * alone["proba"]["all"]["label"]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_bags_uncalibrated_ece_sets_its_folds_temperatures_to_one(bagged):
    import copy

    from mmfuse.evaluate.evaluation import evaluate_model

    root, *_, run, _ = bagged
    model = copy.deepcopy(run.model).eval()
    test = read_manifest(root / "test" / "manifest.csv")
    data = ensemble_dataset(test, model, run.config, 0)

    def members():
        result = evaluate_model(model, data, options=PredictOptions(), ablation=False)
        return result["members"]["late-seed0"]

    before = members()
    for fold in model.members["late-seed0"].members.values():
        fold.set_temperatures({"label": 3.0})
    after = members()
    assert after["ece_uncalibrated"] == pytest.approx(before["ece_uncalibrated"])
    assert after["log_loss"] != pytest.approx(before["log_loss"])


def test_the_onnx_graph_holds_a_shared_encoder_once(bagged, tmp_path):
    import copy

    import onnx

    from mmfuse.ship.onnx import export_onnx
    from mmfuse.ship.runtime import onnx_matches_torch

    root, *_, run, _ = bagged
    sizes = {}
    for shared in (False, True):
        model = copy.deepcopy(run.model)
        if shared:
            leaves = list(model.leaves())
            first = leaves[0][1].encoders["image"].state_dict()
            for _, leaf, _ in leaves:
                leaf.encoders["image"].load_state_dict(first)
        clf = MultimodalClassifier(ensemble=["folds=3", "fusion=attention,late"])
        clf._set_fitted(model, run.config, quick_config())
        folder = clf.save(tmp_path / f"model-{shared}")
        summary = export_onnx(folder, tmp_path / f"{shared}.onnx")
        frame = read_manifest(root / "test" / "manifest.csv").frame.head(2)
        samples = [
            {"image": str(root / "test" / r.image), "audio": str(root / "test" / r.audio),
             "text": r.text}
            for r in frame.itertuples()
        ]  # fmt: skip
        assert onnx_matches_torch(folder, summary["path"], samples) < 1e-4
        sizes[shared] = len(onnx.load(summary["path"]).graph.node)
    # The exporter shares equal weights by itself; the encoder's computation is shared only
    # if the ensemble runs it once: six image encoders' nodes become one encoder's.
    assert sizes[True] < sizes[False]


@pytest.mark.parametrize("folds", [0, 2])
def test_jobs_train_models_in_parallel_processes_like_one_at_a_time(shapes, tmp_path, folds):
    from dataclasses import replace

    _, train, val, _ = shapes
    # fp32: bf16's rounding would make the thread count's float-order differences visible.
    members = [
        replace(m, train_config=replace(m.train_config, precision="fp32"))
        for m in _members(train.classes["label"])
    ]
    runs = {}
    for jobs in (1, 2):
        log: list[str] = []
        runs[jobs] = train_ensemble(
            train, members, tmp_path / f"jobs{jobs}", val=val, folds=folds, jobs=jobs,
            weights="selected", evaluate=False, log=log.append,
        )  # fmt: skip
    assert any("2 at a time" in line for line in log)
    assert sum(line.endswith(": done") for line in log) == 2 * max(folds, 1)
    for name in ("attention-seed0", "late-seed0"):
        one, two = (runs[j].model.members[name] for j in (1, 2))
        pairs = (
            [(one, two)] if not folds else [(one.members[f], two.members[f]) for f in one.members]
        )
        for a, b in pairs:
            # Same data, seed and steps; only the thread count differs (float sums' order).
            a, b = a.state_dict(), b.state_dict()
            for key in a:
                # The temperature's fit on a handful of rows amplifies the weights' differences.
                tol = 1e-2 if key == "temperature" else 1e-3
                torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=tol)
    assert runs[2].model.weights == pytest.approx(runs[1].model.weights, abs=0.05)


def test_weights_members_hold_alike_are_saved_once(bagged, tmp_path):
    import copy
    import shutil

    from mmfuse.errors import CheckpointError

    root, *_, run, _ = bagged
    model = copy.deepcopy(run.model)
    leaves = list(model.leaves())
    first = leaves[0][1].encoders["image"].state_dict()
    for _, leaf, _ in leaves:
        leaf.encoders["image"].load_state_dict(first)  # as a frozen pretrained encoder
    clf = MultimodalClassifier(ensemble=["folds=3", "fusion=attention,late"])
    clf._set_fitted(model, run.config, quick_config())
    folder = clf.save(tmp_path / "model")
    assert (folder / "shared.safetensors").is_file()
    fold = folder / "members" / "late-seed0" / "members" / "fold1"
    link = json.loads((fold / "config.json").read_text())["shared_weights"]
    assert link["file"] == "../../../../shared.safetensors"
    assert all(key.startswith("encoders.image.") for key in link["tensors"])
    loaded, _, _ = load_model(folder)
    for (_, a, _), (_, b, _) in zip(model.leaves(), loaded.leaves()):
        assert not state_dicts_equal(a.state_dict(), b.state_dict())  # no difference
    # ... and in memory one tensor, not one per fold model.
    pointers = {
        p.data_ptr()
        for _, leaf, _ in loaded.leaves()
        for p in leaf.encoders["image"].parameters()
        if p.numel() >= 1024
    }
    per_model = sum(p.numel() >= 1024 for p in loaded.members["late-seed0"].members["fold0"]
                    .encoders["image"].parameters())  # fmt: skip
    assert per_model > 0 and len(pointers) == per_model
    data = root / "test" / "manifest.csv"
    again = MultimodalClassifier.load(folder)
    np.testing.assert_allclose(again.predict_proba(data), clf.predict_proba(data), atol=1e-6)
    alone = tmp_path / "alone"
    shutil.copytree(fold, alone)
    with pytest.raises(CheckpointError, match="load the whole ensemble folder"):
        load_model(alone)
    # Saved again without anything alike: no shared file is left behind.
    clf._set_fitted(run.model, run.config, quick_config())
    clf.save(folder)
    assert not (folder / "shared.safetensors").exists()
    assert "shared_weights" not in json.loads((fold / "config.json").read_text())


def test_encoders_alike_in_weights_but_not_options_are_not_shared():
    from mmfuse.encoders import build
    from mmfuse.model.ensemble import _same_encoder

    def tiny(**options):
        torch.manual_seed(0)
        return build("image", "efficientnet-lite-tiny", **options).eval()

    head, stages, again = tiny(features="head"), tiny(features="stages"), tiny(features="head")
    assert state_dicts_equal(head.state_dict(), stages.state_dict()) == []  # same tensors
    assert _same_encoder(head, head.state_dict(), again, again.state_dict())
    assert not _same_encoder(head, head.state_dict(), stages, stages.state_dict())
    again.train()
    assert not _same_encoder(head, head.state_dict(), again, again.state_dict())


def test_what_a_user_gets_wrong_about_folds_is_one_sentence(shapes, tmp_path):
    from mmfuse.data.manifest import Manifest

    _, train, val, _ = shapes
    pool = pool_rows(train, val)
    with pytest.raises(ConfigError, match=r"no class has 9 rows .* give folds=8 or fewer"):
        fold_rows(pool, 9, seed=0)  # 24 rows, 8 of each class
    assert parse_ensemble("folds=0").folds == 0  # off, as a flag's string too
    odd = val.frame.copy()
    odd.loc[2, "label"] = "hexagon"
    other = Manifest(**{**val.__dict__, "frame": odd})
    with pytest.raises(ConfigError, match="row 2: class 'hexagon' of 'label' is not in the"):
        pool_rows(train, other)


def test_a_resumed_fold_must_come_from_the_same_rows(bagged, tmp_path):
    root, train, val, _, members, *_ = bagged
    fewer = type(val)(**{**val.__dict__, "frame": val.frame.iloc[:-1].reset_index(drop=True)})
    with pytest.raises(ConfigError, match="trained on other training/validation rows"):
        train_ensemble(train, members, root / "run", val=fewer, folds=FOLDS, resume=True,
                       evaluate=False, log=lambda s: None)  # fmt: skip


def test_an_error_in_a_training_process_is_its_own_sentence():
    from mmfuse.data.manifest import read_manifest
    from mmfuse.errors import MmfuseError
    from mmfuse.train.parallel import in_processes

    with pytest.raises(MmfuseError, match=r"nowhere\.csv"):
        in_processes(2, [("a", read_manifest, ("nowhere.csv",)), ("b", len, ([],))], print)


def test_groups_keep_their_rows_in_one_fold(shapes):
    from mmfuse.data.manifest import Manifest

    _, train, val, _ = shapes
    pool = pool_rows(train, val)
    frame = pool.frame.copy()
    frame["recording"] = [f"r{i // 6}" for i in range(len(frame))]  # 4 recordings of 6 rows
    frame.loc[0, "recording"] = None  # a row without one is a group of its own
    grouped = Manifest(**{**pool.__dict__, "frame": frame})
    held = fold_rows(grouped, 3, seed=0, groups="recording")
    assert sorted(np.concatenate(held).tolist()) == list(range(len(frame)))
    fold_of = {int(r): k for k, part in enumerate(held) for r in part}
    for _, rows in frame.iloc[1:].groupby("recording").groups.items():
        assert len({fold_of[int(r)] for r in rows}) == 1
    with pytest.raises(ConfigError, match="no such column"):
        fold_rows(grouped, 3, seed=0, groups="speaker")
    with pytest.raises(ConfigError, match=r"5 groups cannot fill 6 folds"):
        fold_rows(grouped, 6, seed=0, groups="recording")
    spec = parse_ensemble(["folds=3", "groups=recording"])
    assert spec.groups == "recording" and spec.to_dict()["groups"] == "recording"
    with pytest.raises(ConfigError, match="give folds too"):
        parse_ensemble("groups=recording")


def test_saving_over_a_larger_ensemble_leaves_no_stale_member(bagged, tmp_path):
    from mmfuse.model.ensemble_folder import build_ensemble

    *_, run, _ = bagged
    clf = MultimodalClassifier(ensemble=["folds=3", "fusion=attention,late"])
    clf._set_fitted(run.model, run.config, quick_config())
    folder = clf.save(tmp_path / "model")
    bag = run.model.members["late-seed0"]
    two = {n: bag.members[n] for n in ("fold0", "fold1")}
    configs = {n: bag.member_configs[n] for n in two}
    smaller, config = build_ensemble(two, configs, {"fold0": 0.5, "fold1": 0.5})
    clf._set_fitted(smaller, config, quick_config())
    clf.save(folder)  # over the 2 × 3 bagged ensemble's folder
    assert sorted(p.name for p in (folder / "members").iterdir()) == ["fold0", "fold1"]
    assert isinstance(load_model(folder)[0], EnsembleModel)
