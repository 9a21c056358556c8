"""AnomalyDetector: scorers, threshold, fusion of inputs, save/load, on synthetic features and
a tiny generated surveillance set read by tiny random encoders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomaly_helpers import TINY_ENCODERS
from mmfuse.anomaly import AnomalyDetector, fuse_scores
from mmfuse.anomaly.detector import conformal_threshold
from mmfuse.anomaly.scorers import SCORERS, make_scorer, scorer_from_state
from mmfuse.data.surveillance import make_surveillance, plan
from mmfuse.data.writers import write_video
from mmfuse.model.config import ConfigError


@pytest.mark.parametrize("name", SCORERS)
def test_scorer_ranks_an_outlier_above_normal_points(name):
    rng = np.random.default_rng(0)
    cov = np.diag(np.linspace(0.2, 2.0, 8))
    normal = rng.multivariate_normal(np.zeros(8), cov, size=300)
    fresh = rng.multivariate_normal(np.zeros(8), cov, size=50)
    outlier = np.full((1, 8), 4.0)
    scorer = make_scorer(name, k=5).fit(normal)
    scores = scorer.score(np.vstack([fresh, outlier]))
    assert scores.shape == (51,)
    assert scores[-1] > scores[:-1].max()
    rebuilt = scorer_from_state(name, scorer.state(), k=5)
    np.testing.assert_allclose(rebuilt.score(fresh), scorer.score(fresh), rtol=1e-6)


def test_gaussian_scorer_follows_the_covariance_not_the_raw_distance():
    rng = np.random.default_rng(1)
    # Wide along x, narrow along y: a step of 2 along y is far more abnormal than one along x.
    normal = rng.normal(size=(500, 2)) * np.array([3.0, 0.3])
    scorer = make_scorer("gaussian").fit(normal)
    along_x, along_y = scorer.score(np.array([[2.0, 0.0], [0.0, 2.0]]))
    assert along_y > 3 * along_x


def test_unknown_scorer_names_the_choices():
    with pytest.raises(ConfigError, match="knn, gaussian"):
        make_scorer("isolation")


def test_threshold_holds_the_false_alarm_rate_on_held_out_and_new_normal_scores():
    rng = np.random.default_rng(2)
    held, new = rng.normal(size=2000), rng.normal(size=50_000)
    for rate in (0.01, 0.05, 0.2):
        threshold, enough = conformal_threshold(held, rate)
        assert enough
        assert rate - 0.005 <= (held > threshold).mean() <= rate
        assert abs((new > threshold).mean() - rate) < 0.01 + rate * 0.25


def test_threshold_with_too_few_held_out_scores_is_their_highest():
    threshold, enough = conformal_threshold(np.array([0.1, 0.5, 0.3]), 0.01)
    assert (threshold, enough) == (0.5, False)


def test_missing_input_does_not_vote():
    z = {
        "video": np.array([3.0, 3.0, np.nan, np.nan]),
        "audio": np.array([1.0, np.nan, 2.0, np.nan]),
    }
    fused = fuse_scores(z)
    np.testing.assert_allclose(fused[:3], [4.0 / np.sqrt(2), 3.0, 2.0])
    assert np.isnan(fused[3])


@pytest.fixture(scope="module")
def surveillance(tmp_path_factory):
    root = tmp_path_factory.mktemp("surveillance")
    return make_surveillance(root, samples=24, seed=0)


@pytest.fixture
def tiny(tmp_path):
    return AnomalyDetector(
        encoders=TINY_ENCODERS, false_alarm=0.2, cache_dir=tmp_path / "cache", device="cpu"
    )


def test_surveillance_plan_labels_and_kinds():
    splits = plan(40, seed=3)
    assert all(c.kind == "normal" for s in ("train", "val") for c in splits[s])
    kinds = [c.kind for c in splits["test"]]
    assert {"normal", "visual", "acoustic", "both"} == set(kinds)
    assert kinds.count("normal") == len(kinds) - kinds.count("visual") * 3
    indices = [c.index for s in splits.values() for c in s]
    assert indices == list(range(40))


def test_surveillance_manifests(surveillance):
    test = pd.read_csv(surveillance["test"])
    assert list(test.columns) == ["video", "label", "kind"]
    assert set(test["label"]) == {"normal", "anomaly"}
    assert ((test["kind"] == "normal") == (test["label"] == "normal")).all()
    for split in ("train", "val"):
        assert set(pd.read_csv(surveillance[split])["label"]) == {"normal"}


def test_fit_scores_and_round_trips(surveillance, tiny, tmp_path):
    tiny.fit(surveillance["train"], val=surveillance["val"])
    assert sorted(tiny.inputs_) == ["video", "video_audio"]
    assert all(s.mode == "freeze" for s in tiny.inputs_.values())
    table = tiny.score_table(surveillance["test"])
    assert list(table.columns) == ["score", "anomaly", "score_video", "score_video_audio", "error"]
    assert table["score"].notna().all()
    assert (table["anomaly"] == (table["score"] > tiny.threshold_)).all()
    np.testing.assert_array_equal(tiny.predict(surveillance["test"]), table["anomaly"])
    tiny.save(tmp_path / "det")
    assert not list((tmp_path / "det").glob("*.pkl"))
    loaded = AnomalyDetector.load(tmp_path / "det")
    assert loaded.threshold_ == tiny.threshold_
    np.testing.assert_allclose(
        loaded.score_samples(surveillance["test"]), table["score"], rtol=1e-5, atol=1e-6
    )


def test_clip_without_sound_is_scored_by_its_frames_alone(surveillance, tiny, tmp_path):
    tiny.fit(surveillance["train"])  # the held-out split comes from the fit rows
    silent = tmp_path / "silent.mp4"
    write_video(silent, np.full((20, 72, 96, 3), 90, np.uint8), fps=10)
    frame = pd.DataFrame({"video": [str(silent)]})
    table = tiny.score_table(frame)
    assert np.isnan(table["score_video_audio"][0])
    assert table["score"][0] == pytest.approx(table["score_video"][0])
    assert "video_audio" in table["error"][0]


def test_fit_rejects_a_bad_false_alarm_and_unfitted_use(surveillance):
    with pytest.raises(ConfigError, match="--false-alarm"):
        AnomalyDetector(false_alarm=1.5).fit(surveillance["train"])
    with pytest.raises(ValueError, match="not fitted"):
        AnomalyDetector().predict(surveillance["test"])


def test_encoder_choices_by_input_and_modality_every_input_frozen(tmp_path):
    from mmfuse.anomaly.features import input_configs
    from mmfuse.data.manifest import read_manifest

    frame = pd.DataFrame({"cam": ["a.mp4", "b.mp4"], "mic": ["a.wav", "b.wav"]})
    manifest = read_manifest(frame, root=tmp_path)
    configs = input_configs(
        manifest,
        {"cam": "r3d", "cam_audio": "mfcc-lstm", "audio": "mel-cnn"},
        preset="best",  # fine-tunes elsewhere; a one-class detector freezes every encoder
    )
    assert sorted(configs) == ["cam", "cam_audio", "mic"]
    assert (configs["cam"].encoder, configs["cam"].modality) == ("r3d", "video")
    assert (configs["cam_audio"].encoder, configs["cam_audio"].column) == ("mfcc-lstm", "cam")
    assert configs["mic"].encoder == "mel-cnn"
    assert {c.mode for c in configs.values()} == {"freeze"}


def test_the_preset_image_grid_and_audio_stats_are_left_to_classifiers(tmp_path):
    from mmfuse.anomaly.features import input_configs
    from mmfuse.data.manifest import read_manifest
    from mmfuse.train.presets import resolve_preset

    frame = pd.DataFrame({"photo": ["a.png", "b.png"], "mic": ["a.wav", "b.wav"]})
    manifest = read_manifest(frame, root=tmp_path)
    medium = resolve_preset(
        "medium", ["image", "audio"], lr=1e-3, epochs=None, installed=lambda m: True
    )
    # What a classifier gets:
    assert medium.encoders["image"]["options"]["grid"] == 3
    assert medium.encoders["audio"]["options"]["stats"] is True
    configs = input_configs(manifest, None, preset="medium")
    assert configs["photo"].options == {"features": "stages"}
    assert configs["mic"].options == {}
    # A grid the caller asks for is kept.
    asked = {
        "image": {"encoder": "efficientnet-lite-tiny", "options": {"grid": 2, "features": "stages"}}
    }
    assert input_configs(manifest, asked, preset="medium")["photo"].options["grid"] == 2


def test_numeric_column_is_refused_with_the_fix(tmp_path):
    from mmfuse.anomaly.features import input_configs
    from mmfuse.data.manifest import read_manifest

    frame = pd.DataFrame({"cam": ["a.mp4", "b.mp4", "c.mp4"], "temp": [1.5, 2.0, 3.5]})
    with pytest.raises(ConfigError, match=r"'temp' is numeric.*drop the column"):
        input_configs(
            read_manifest(frame, root=tmp_path), {"video": "r3d", "audio": "mel-cnn"}, None
        )


def test_fit_leaves_out_rows_not_labelled_normal(surveillance, tiny):
    test = pd.read_csv(surveillance["test"]).drop(columns=["kind"])
    test["video"] = [str(surveillance["test"].parent / v) for v in test["video"]]
    tiny.fit(test)
    assert tiny.n_reference_ + tiny.n_held_out_ == (test["label"] == "normal").sum()


def test_params_round_trip_through_sklearn_clone():
    from sklearn.base import clone

    det = AnomalyDetector(scorer="gaussian", false_alarm=0.05, encoders={"audio": "mel-cnn"})
    copy = clone(det)
    assert copy.get_params() == det.get_params()
    assert not hasattr(copy, "threshold_")
