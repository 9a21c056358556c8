"""What /docs shows: the error table, and the form fields of the model being served.

The routes are written once for every model, but their request bodies are the model's inputs
(a file picker per image, audio or video input, a text box per text input), so those forms are
added to the OpenAPI schema when an app is built for a model.
"""

from __future__ import annotations

from fastapi import FastAPI

from mmfuse.serve.errors import ErrorBody
from mmfuse.serve.service import Service
from mmfuse.serve.uploads import MAX_BATCH_SAMPLES

# status, reason, when: the error answers, for the OpenAPI description and the README.
ERRORS = (
    (400, "bad-multipart", "the body is not valid multipart/form-data (cut short, no boundary)"),
    (400, "duplicate-field", "one input given twice for the same sample"),
    (413, "too-large", "the body is over max_upload_bytes, or a text over 1 MiB"),
    (415, "unsupported-content-type", "the request is not multipart/form-data"),
    (415, "wrong-modality", "the file holds another modality (a WAV sent as image)"),
    (422, "unknown-field", "a field the model does not take (the message lists those it does)"),
    (422, "missing-input", "no input at all (field null), or a batch index with none"),
    (422, "not-a-file", "a plain form value where a file upload is expected"),
    (422, "bad-value", "a numeric input's value is not a finite number"),
    (422, "zero-length", "an empty file"),
    (422, "unreadable", "a file that cannot be decoded (also truncated, too-short)"),
    (422, "too-many-samples", f"a batch of more than {MAX_BATCH_SAMPLES} samples"),
    (422, "non-finite", "the probabilities came out NaN or Inf (field: the input at fault)"),
    (401, "unauthorized", "the server has an API key and the request lacks it (Bearer <key>)"),
    (408, "timeout", "the headers or body did not arrive in time; the connection is closed"),
    (503, "busy", "the server holds its cap of open connections; the connection is closed"),
    (500, "internal", "a bug in the server; the log has the traceback"),
)

ERROR_RESPONSES = {
    status: {
        "model": ErrorBody,
        "description": "; ".join(f"{r}: {w}" for s, r, w in ERRORS if s == status),
    }
    for status in sorted({s for s, _, _ in ERRORS})
}

# Route → the field-name prefixes its form shows: one sample, or samples 0 and 1 of a batch.
FORMS = {"/predict": [""], "/predict/batch": ["0.", "1."]}


def description(service: Service) -> str:
    """The API's description: the model's inputs and classes, the body limit, the errors."""
    inputs = ", ".join(f"`{n}` ({m})" for n, m in service.modalities.items())
    classes = "; ".join(f"{t}: {', '.join(c)}" for t, c in service.labels.items())
    rows = "\n".join(f"| {s} | `{r}` | {w} |" for s, r, w in ERRORS)
    return (
        f"Inputs: {inputs}. Classes: {classes}. "
        f"Request bodies up to {service.max_upload_bytes} bytes.\n\n"
        "`POST /predict` takes one sample as multipart fields named by input; "
        "`POST /predict/batch` takes several, as fields named `<index>.<input>` "
        '(`0.image`, `0.text`, `1.audio`, ...) and answers `{"results": [...]}` in index '
        "order.\n\n"
        'Errors are `{"error": {"field": ..., "reason": ..., "message": ...}}`, with `field` the '
        "form field at fault (null when it is the whole request):\n\n"
        "| status | reason | when |\n|---|---|---|\n" + rows
    )


def form_body(modalities: dict[str, str], prefixes: list[str]) -> dict:
    """The multipart request body in OpenAPI, so /docs shows a field (or file picker) per input."""
    properties = {}
    for prefix in prefixes:
        for name, modality in modalities.items():
            if modality in ("text", "categorical"):
                properties[prefix + name] = {
                    "type": "string",
                    "description": f"{name} ({modality})",
                }
            elif modality == "numeric":
                properties[prefix + name] = {"type": "number", "description": f"{name} (a number)"}
            else:
                properties[prefix + name] = {
                    "type": "string",
                    "format": "binary",
                    "description": f"{name} ({modality} file)",
                }
    schema = {"type": "object", "properties": properties}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def add_forms(app: FastAPI, service: Service) -> None:
    """Give the POST routes of `app` the request bodies of the model `service` holds."""
    bodies = {path: form_body(service.modalities, prefixes) for path, prefixes in FORMS.items()}
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()  # FastAPI keeps it in app.openapi_schema, so this runs once
            for path, body in bodies.items():
                schema["paths"][path]["post"]["requestBody"] = body
        return app.openapi_schema

    app.openapi = openapi
