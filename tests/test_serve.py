"""The HTTP service: endpoints, batching, the same tensors as evaluation, and 4xx for bad input."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from mmfuse.classifier import MultimodalClassifier
from mmfuse.cli import serve as serve_cli
from mmfuse.data.manifest import read_manifest
from mmfuse.data.synthetic import make_shapes
from mmfuse.errors import CheckpointError
from mmfuse.serve import run as serve_run
from mmfuse.serve.app import create_app
from mmfuse.serve.batcher import DynamicBatcher
from mmfuse.serve.uploads import MAX_TEXT_BYTES, SPOOL_BYTES
from mmfuse.train.run import dataset_for
from train_helpers import tiny_classifier

CLASSES = ["blue", "green", "red"]
INPUTS = ["audio", "image", "text"]


def train_tiny_model(root: Path) -> tuple[Path, Path]:
    """Shapes data (6 per class) in root/data and a 2-epoch attention model in root/model."""
    make_shapes(root / "data", 6, 3, seed=0)
    clf = tiny_classifier(
        root / "run", fusion="attention", epochs=2, batch_size=6, lr=1e-2, fusion_dim=32
    )
    clf.fit(root / "data" / "manifest.csv")
    clf.save(root / "model")
    return root / "model", root / "data"


def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """The model of `train_tiny_model`, trained once per test session (both serve modules)."""
    root = tmp_path_factory.getbasetemp() / "serve-model"
    if not (root / "model" / "config.json").is_file():
        train_tiny_model(root)
    return root / "model", root / "data"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def client(trained, uploads):
    with TestClient(create_app(trained[0], upload_dir=uploads)) as c:
        yield c


@pytest.fixture(scope="module")
def small_client(trained):
    """A server that takes request bodies of at most 4 KiB."""
    with TestClient(create_app(trained[0], max_upload_bytes=4096)) as c:
        yield c


@pytest.fixture(scope="module")
def row(trained) -> dict:
    frame = pd.read_csv(trained[1] / "manifest.csv")
    return frame.iloc[0].to_dict()


def media(trained, row, column) -> tuple[str, bytes]:
    return row[column], (trained[1] / row[column]).read_bytes()


def full_sample(trained, row) -> dict:
    return {
        "image": media(trained, row, "image"),
        "audio": media(trained, row, "audio"),
        "text": (None, row["text"]),
    }


def assert_prediction(result: dict, used: list[str]) -> None:
    assert result["label"] in CLASSES
    assert list(result["probabilities"]) == CLASSES
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["modalities_used"] == used
    weights = result["modality_weights"]
    assert set(weights) == set(INPUTS)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(weights[n] == 0.0 for n in INPUTS if n not in used)  # absent: weight exactly 0
    assert result["latency_ms"] > 0


# ---------------------------------------------------------------------------------- endpoints
def test_health_and_model(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    assert {"forwards", "mean_batch", "largest_batch"} <= set(health["batching"])
    model = client.get("/model").json()
    assert model["labels"] == {"label": CLASSES}
    assert {n: s["modality"] for n, s in model["inputs"].items()} == dict(zip(INPUTS, INPUTS))
    assert model["fusion"] == "attention"
    assert model["limits"]["max_upload_bytes"] == 100 * 2**20


def test_docs_and_openapi_describe_the_form(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    single = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert single["schema"]["properties"]["image"]["format"] == "binary"
    assert single["schema"]["properties"]["text"]["type"] == "string"
    batch = spec["paths"]["/predict/batch"]["post"]
    assert "<index>.<input>" in batch["description"]
    assert (
        "0.image" in batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    )
    assert "wrong-modality" in spec["info"]["description"]


def test_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'call("model")' in html and 'call("predict"' in html
    for external in ('src="http', "src='http", 'href="http', "@import", "url(http"):
        assert external not in html


def test_predict_every_input(client, trained, row):
    response = client.post("/predict", files=full_sample(trained, row))
    assert response.status_code == 200, response.text
    result = response.json()
    assert_prediction(result, INPUTS)
    assert result["tasks"]["label"]["label"] == result["label"]


@pytest.mark.parametrize("only", INPUTS)
def test_predict_from_one_modality(client, trained, row, only):
    files = {only: full_sample(trained, row)[only]}
    response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    result = response.json()
    assert_prediction(result, [only])
    assert result["modality_weights"][only] == pytest.approx(1.0)


def test_text_may_come_as_a_txt_upload(client, row):
    as_file = client.post("/predict", files={"text": ("t.txt", row["text"].encode())}).json()
    as_value = client.post("/predict", files={"text": (None, row["text"])}).json()
    assert as_file["probabilities"] == pytest.approx(as_value["probabilities"], abs=1e-6)


def test_batch_matches_single_predictions(client, trained, row):
    sample = full_sample(trained, row)
    files = [
        ("0.image", sample["image"]),
        ("0.text", sample["text"]),
        ("1.audio", sample["audio"]),
        ("2.image", sample["image"]),
        ("2.audio", sample["audio"]),
        ("2.text", sample["text"]),
    ]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["modalities_used"] for r in results] == [["image", "text"], ["audio"], INPUTS]
    singles = [
        {"image": sample["image"], "text": sample["text"]},
        {"audio": sample["audio"]},
        sample,
    ]
    for result, single in zip(results, singles):
        alone = client.post("/predict", files=single).json()
        for c in CLASSES:
            assert result["probabilities"][c] == pytest.approx(alone["probabilities"][c], abs=1e-5)


def test_service_tensors_equal_evaluation_tensors(client, trained, monkeypatch):
    """The service builds, for an uploaded file, the very tensors evaluation builds from it,
    and its probabilities are `MultimodalClassifier.predict_proba`'s."""
    model_dir, data_dir = trained
    clf = MultimodalClassifier.load(model_dir)
    manifest = read_manifest(data_dir / "manifest.csv")
    dataset = dataset_for(manifest, clf.model_, clf.model_config_, clf.train_config_, train=False)
    proba = clf.predict_proba(manifest)
    predictor = client.app.state.service.predictor
    seen = []
    real = predictor.predict_tensors

    def spy(samples):
        seen.extend(samples)
        return real(samples)

    monkeypatch.setattr(predictor, "predict_tensors", spy)
    for i in (0, 5):
        expected = dataset[i]["inputs"]
        values = manifest.frame.iloc[i]
        files = {
            "image": (values["image"], (data_dir / values["image"]).read_bytes()),
            "audio": (values["audio"], (data_dir / values["audio"]).read_bytes()),
            "text": (None, values["text"]),
        }
        seen.clear()
        result = client.post("/predict", files=files).json()
        (tensors,) = seen
        assert torch.equal(tensors["image"], expected["image"])
        assert torch.equal(tensors["audio"], expected["audio"])
        assert tensors["text"] == expected["text"]
        served = [result["probabilities"][c] for c in clf.labels_["label"]]
        np.testing.assert_allclose(served, proba[i], atol=1e-5)


def test_uploads_are_deleted(client, trained, row, uploads):
    assert client.post("/predict", files=full_sample(trained, row)).status_code == 200
    assert client.post("/predict", files={"image": media(trained, row, "audio")}).status_code == 415
    assert client.post("/predict", files={"image": ("x.png", b"")}).status_code == 422
    # Past SPOOL_BYTES an upload streams to disk (a PNG decoder ignores bytes after IEND).
    big = media(trained, row, "image")[1] + bytes(SPOOL_BYTES + 1)
    assert client.post("/predict", files={"image": ("big.png", big)}).status_code == 200
    big_text = {"text": ("t.txt", b"a" * (SPOOL_BYTES + 1))}
    assert_error(client.post("/predict", files=big_text), 413, "too-large", "text")
    assert list(uploads.iterdir()) == []


# ---------------------------------------------------------------------------------- bad input
def multipart(*parts: bytes, boundary: str = "b0undary", close: bool = True) -> dict:
    """A hand-made multipart request: `parts` are whole parts, headers included."""
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    if close:
        body += b"--" + boundary.encode() + b"--\r\n"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return {"content": body, "headers": headers}


def file_part(name: str, filename: str, data: bytes) -> bytes:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data


NOISE = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()


@dataclass
class Media:
    png: tuple[str, bytes]  # (file name, bytes) of a real image and audio clip
    wav: tuple[str, bytes]


# (id, request keywords from Media, status, reason, field)
BAD_INPUTS = [
    ("wav-as-image", lambda m: {"files": {"image": m.wav}}, 415, "wrong-modality", "image"),
    ("png-as-audio", lambda m: {"files": {"audio": m.png}}, 415, "wrong-modality", "audio"),
    (
        "text-as-audio",
        lambda m: {"files": {"audio": ("a.wav", b"words")}},
        415,
        "wrong-modality",
        "audio",
    ),
    ("garbage-image", lambda m: {"files": {"image": ("x.png", NOISE)}}, 422, "unreadable", "image"),
    ("garbage-audio", lambda m: {"files": {"audio": ("x.wav", NOISE)}}, 422, "unreadable", "audio"),
    (
        "cut-png",
        lambda m: {"files": {"image": ("x.png", m.png[1][:200])}},
        422,
        "truncated",
        "image",
    ),
    ("empty-image", lambda m: {"files": {"image": ("x.png", b"")}}, 422, "zero-length", "image"),
    ("empty-audio", lambda m: {"files": {"audio": ("x.wav", b"")}}, 422, "zero-length", "audio"),
    ("empty-text-only", lambda m: {"files": {"text": (None, "")}}, 422, "missing-input", None),
    ("no-field", lambda m: multipart(), 422, "missing-input", None),
    ("unknown-field", lambda m: {"files": {"depth": m.png}}, 422, "unknown-field", "depth"),
    ("batch-name", lambda m: {"files": {"0.text": (None, "x")}}, 422, "unknown-field", "0.text"),
    ("value-for-file", lambda m: {"files": {"image": (None, "a.png")}}, 422, "not-a-file", "image"),
    (
        "text-not-utf8",
        lambda m: {"files": {"text": (None, b"\xff\xfe")}},
        422,
        "unreadable",
        "text",
    ),
    (
        "text-too-long",
        lambda m: {"files": {"text": (None, "a" * (MAX_TEXT_BYTES + 1))}},
        413,
        "too-large",
        "text",
    ),
    (
        "twice",
        lambda m: {"files": [("image", m.png), ("image", m.png)]},
        400,
        "duplicate-field",
        "image",
    ),
    ("json", lambda m: {"json": {"text": "red"}}, 415, "unsupported-content-type", None),
    ("urlencoded", lambda m: {"data": {"text": "red"}}, 415, "unsupported-content-type", None),
    (
        "no-boundary",
        lambda m: {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
        400,
        "bad-multipart",
        None,
    ),
    (
        "cut-body",
        lambda m: multipart(file_part("image", "x.png", m.png[1]), close=False),
        400,
        "bad-multipart",
        None,
    ),
    (
        "nameless-part",
        lambda m: multipart(b"Content-Disposition: form-data\r\n\r\nred"),
        400,
        "bad-multipart",
        None,
    ),
]


def assert_error(response, status: int, reason: str, field: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["reason"], error["field"]) == (reason, field), error
    assert error["message"]


@pytest.mark.parametrize(
    ("make", "status", "reason", "field"), [pytest.param(*c[1:], id=c[0]) for c in BAD_INPUTS]
)
def test_bad_input_is_a_4xx_naming_the_field(client, trained, row, make, status, reason, field):
    request = make(Media(media(trained, row, "image"), media(trained, row, "audio")))
    response = client.post("/predict", **request)
    assert 400 <= response.status_code < 500, response.text  # never a 5xx
    assert_error(response, status, reason, field)


def test_error_messages_name_the_upload_not_the_temporary_file(client, trained, row):
    error = client.post("/predict", files={"image": media(trained, row, "audio")}).json()["error"]
    assert row["audio"] in error["message"] and "mmfuse-upload-" not in error["message"]
    assert "takes image files" in error["message"]


@pytest.mark.parametrize(
    ("files", "status", "reason", "field"),
    [
        ({"image": (None, "x")}, 422, "unknown-field", "image"),
        ({"0.depth": (None, "x")}, 422, "unknown-field", "0.depth"),
        ({"0.text": (None, "a"), "2.text": (None, "b")}, 422, "missing-input", "1"),
        ({"0.text": (None, "a"), "1.text": (None, "")}, 422, "missing-input", "1"),
        ({"999.text": (None, "a")}, 422, "too-many-samples", "999.text"),
        ({"0.image": ("x.png", b"")}, 422, "zero-length", "0.image"),
        ({"0.text": (None, "a"), "1.image": ("x.png", NOISE)}, 422, "unreadable", "1.image"),
    ],
)
def test_bad_batch_is_a_4xx_naming_the_field(client, files, status, reason, field):
    assert_error(client.post("/predict/batch", files=files), status, reason, field)


def test_batch_wrong_modality_names_the_indexed_field(client, trained, row):
    files = {"0.text": (None, "a"), "1.image": media(trained, row, "audio")}
    assert_error(client.post("/predict/batch", files=files), 415, "wrong-modality", "1.image")
    assert_error(client.post("/predict/batch", files={}), 415, "unsupported-content-type", None)
    empty = multipart()
    assert_error(client.post("/predict/batch", **empty), 422, "missing-input", None)


def test_oversized_upload_is_a_413(small_client, trained, row):
    png = media(trained, row, "image")[1]
    big = png + bytes(5000)
    # Content-Length over the limit: refused before reading, so no field is named.
    response = small_client.post("/predict", files={"image": ("big.png", big)})
    assert_error(response, 413, "too-large", None)
    # No Content-Length (a chunked stream): refused while streaming, naming the field.
    request = multipart(file_part("text", "t.txt", b"red"), file_part("image", "big.png", big))

    def chunks():
        yield request["content"]

    response = small_client.post("/predict", content=chunks(), headers=request["headers"])
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "too-large", "image")
    # Under the limit it is served.
    assert small_client.post("/predict", files={"image": ("ok.png", png)}).status_code == 200


def test_unknown_routes_answer_in_the_error_format(client):
    assert_error(client.get("/nope"), 404, "not-found", None)
    assert_error(client.get("/predict"), 405, "method-not-allowed", None)


def test_a_bug_is_a_json_500(trained, monkeypatch, row):
    app = create_app(trained[0])

    def broken(samples):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.service.predictor, "predict_tensors", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.post("/predict", files={"text": (None, "a red square")})
        assert_error(response, 500, "internal", None)
        assert "RuntimeError" in response.json()["error"]["message"]
        # The batcher survives a failed batch.
        monkeypatch.undo()
        assert c.post("/predict", files={"text": (None, "a red square")}).status_code == 200


# ---------------------------------------------------------------------------------- non-finite
def nan_wav() -> bytes:
    """A float WAV with NaN samples throughout."""
    x = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    x[::7] = np.nan
    buffer = io.BytesIO()
    sf.write(buffer, x, 16000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_non_finite_audio_is_a_422_naming_its_field(client, row):
    bad = ("nan.wav", nan_wav())
    response = client.post("/predict", files={"audio": bad, "text": (None, row["text"])})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "audio" and "nan" in error["message"].lower(), error
    response = client.post("/predict/batch", files={"0.text": (None, "red"), "1.audio": bad})
    assert response.status_code == 422 and response.json()["error"]["field"] == "1.audio"


def test_a_non_finite_decoded_input_is_named_even_past_the_readers(trained, row, monkeypatch):
    app = create_app(trained[0])
    predictor = app.state.service.predictor
    real = predictor.preprocess

    def nan_audio(sample):  # as if a reader let NaN through
        values = real(sample)
        if "audio" in values:
            values["audio"] = torch.full_like(values["audio"], float("nan"))
        return values

    monkeypatch.setattr(predictor, "preprocess", nan_audio)
    with TestClient(app) as c:
        response = c.post("/predict", files=full_sample(trained, row))
        assert_error(response, 422, "non-finite", "audio")
        assert "decoded values hold NaN or Inf" in response.json()["error"]["message"]


def test_non_finite_probabilities_are_a_422_never_an_answer(trained, row):
    app = create_app(trained[0])
    model = app.state.service.predictor.model
    with torch.no_grad():
        for name, weights in model.named_parameters():
            if name.startswith("heads"):
                weights.fill_(float("nan"))  # a poisoned model: every probability is NaN
    with TestClient(app) as c:
        text_only = c.post("/predict", files={"text": (None, "a red square")})
        assert_error(text_only, 422, "non-finite", "text")
        everything = c.post("/predict", files=full_sample(trained, row))
        assert_error(everything, 422, "non-finite", None)
        assert "weights are not finite" in everything.json()["error"]["message"]
        batch = c.post("/predict/batch", files={"0.text": (None, "red"), "1.text": (None, "a")})
        assert_error(batch, 422, "non-finite", "0.text")


# ---------------------------------------------------------------------------------- batching
def test_concurrent_requests_share_forward_passes(trained, row):
    app = create_app(trained[0], max_batch=8, max_wait_ms=50)
    sample = full_sample(trained, row)
    requests = 24

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await asyncio.gather(
                *(ac.post("/predict", files=sample) for _ in range(requests))
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * requests
    first = responses[0].json()["probabilities"]
    for r in responses:
        for c in CLASSES:
            assert r.json()["probabilities"][c] == pytest.approx(first[c], abs=1e-5)
    stats = app.state.service.batcher.stats
    assert stats.items == requests
    assert stats.forwards < requests and stats.largest > 1, stats.to_dict()
    assert stats.largest <= 8


def test_batcher_runs_items_in_one_call_and_passes_errors():
    calls = []

    def double(items):
        calls.append(list(items))
        if "boom" in items:
            raise ValueError("boom")
        return [2 * x for x in items]

    batcher = DynamicBatcher(double, max_batch=4, max_wait_ms=20)

    async def run():
        results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit("boom")
        await batcher.close()
        return results

    assert asyncio.run(run()) == [0, 2, 4, 6, 8, 10]
    assert calls[:2] == [[0, 1, 2, 3], [4, 5]]
    assert batcher.stats.forwards == 2 and batcher.stats.sizes == {4: 1, 2: 1}
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(double, max_batch=0)


# ---------------------------------------------------------------------------------- running
def test_cli_arguments_and_command(trained, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args([str(trained[0])])
    assert (args.host, args.port, args.workers, args.device) == ("127.0.0.1", 8000, 1, "cpu")
    args = parser.parse_args([str(trained[0]), "--port", "9001", "--workers", "3"])
    with pytest.raises(SystemExit):
        parser.parse_args([str(trained[0]), "--workers", "0"])

    calls = []
    monkeypatch.setattr(serve_run, "serve", lambda *a, **k: calls.append((a, k)))
    assert serve_cli.run(args) == 0
    ((positional, keywords),) = calls
    assert positional == (str(trained[0]), "127.0.0.1", 9001, 3)
    assert keywords["max_upload_bytes"] == 100 * 2**20 and keywords["device"] == "cpu"


def test_serving_a_folder_that_is_no_model_fails_before_listening(tmp_path):
    with pytest.raises(CheckpointError, match="not an mmfuse model folder"):
        serve_run.serve(tmp_path, workers=1)
    with pytest.raises(CheckpointError, match="not an mmfuse model folder"):
        serve_run.serve(tmp_path, workers=2)


def test_factory_reads_the_model_folder_from_the_environment(trained, monkeypatch):
    monkeypatch.setenv(serve_run.ENV_MODEL_DIR, str(trained[0]))
    monkeypatch.setenv(serve_run.ENV_OPTIONS, json.dumps({"max_batch": 4}))
    app = serve_run.app_from_env()
    assert app.state.service.batcher.max_batch == 4
    with TestClient(app) as c:
        assert c.post("/predict", files={"text": (None, "red")}).status_code == 200
    monkeypatch.delenv(serve_run.ENV_MODEL_DIR)
    with pytest.raises(RuntimeError, match=serve_run.ENV_MODEL_DIR):
        serve_run.app_from_env()
