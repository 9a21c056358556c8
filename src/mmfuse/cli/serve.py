"""`mmfuse serve MODEL_DIR`: the service's flags, and the command that starts it.

FastAPI is imported only when the command runs, so the other commands work without the
`serve` extra.
"""

from __future__ import annotations

import argparse
import os
import sys

from mmfuse.cli.common import EXIT_OK, add_device_flag, add_model_dir, model_folder, resolve_device

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `mmfuse serve`."""
    add_model_dir(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, metavar="N", help="port (default: 8000)"
    )
    parser.add_argument(
        "--workers",
        type=_at_least(1, int),
        default=1,
        metavar="N",
        help="server processes, each loading its own copy of the model (default: 1)",
    )
    add_device_flag(parser, "cpu")
    parser.add_argument(
        "--max-upload-mb",
        type=_at_least(0.001, float),
        default=100.0,
        metavar="MB",
        help="largest request body, in MiB; larger ones get a 413 (default: 100)",
    )
    parser.add_argument(
        "--max-batch",
        type=_at_least(1, int),
        default=32,
        metavar="N",
        help="most samples in one forward pass (default: 32)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=_at_least(0.0, float),
        default=5.0,
        metavar="MS",
        help="how long a request waits for others to share its forward pass (default: 5)",
    )
    parser.add_argument(
        "--torch-threads",
        type=_at_least(1, int),
        metavar="N",
        help="torch threads per server process (default: torch's, one per core)",
    )
    _add_access_arguments(parser)
    parser.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="info",
        help="uvicorn's log level; below info, requests are not logged (default: info)",
    )


def _add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for slow or unknown clients: read timeouts, the connection cap, key and CORS."""
    parser.add_argument(
        "--header-timeout",
        type=_at_least(0.001, float),
        default=10.0,
        metavar="S",
        help="seconds a client has to send a request's headers; a slower one gets a 408 and "
        "is disconnected (default: 10)",
    )
    parser.add_argument(
        "--body-timeout",
        type=_at_least(0.001, float),
        default=60.0,
        metavar="S",
        help="seconds a client has to send a request's body after its headers (default: 60)",
    )
    parser.add_argument(
        "--max-connections",
        type=_at_least(1, int),
        default=100,
        metavar="N",
        help="open connections per server process; more get a 503 (default: 100)",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="require the header 'Authorization: Bearer KEY' on every route but /health "
        "(default: $MMFUSE_API_KEY, else none; prefer the variable: a flag shows in `ps`)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        type=_origin,
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com) call the service from "
        "a browser; repeatable, * for any (default: none)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve a saved model over HTTP: a JSON API, a web page and OpenAPI docs.

    Open http://HOST:PORT/ for the page (pick files, type text, see the label and the class
    and modality-weight bars) and /docs for the API. POST /predict takes one sample as
    multipart fields named by input (image, audio and video as files, text as a value);
    POST /predict/batch takes fields named <index>.<input>. Concurrent requests share one
    forward pass (--max-batch, --max-wait-ms). Bad uploads get a 4xx naming the field.

    It listens on 127.0.0.1 (this machine only) unless --host says otherwise. Slow clients are
    disconnected (--header-timeout, --body-timeout) and open connections are capped
    (--max-connections). With --api-key or $MMFUSE_API_KEY every route but /health and the
    page needs 'Authorization: Bearer KEY'; --cors-origin lets pages on other sites call it.

    examples:
      mmfuse serve runs/train
      MMFUSE_API_KEY=s3cret mmfuse serve runs/train --host 0.0.0.0 --port 8080 --workers 4
      curl -F image=@cat.png -F text="a cat" http://127.0.0.1:8000/predict
      curl -F 0.image=@a.png -F 1.image=@b.png http://127.0.0.1:8000/predict/batch
      curl -H "Authorization: Bearer s3cret" -F text="a cat" http://HOST:8080/predict
    """
    device = resolve_device(args.device)
    model_folder(args.model_dir)
    from mmfuse.serve import run as runner  # imports FastAPI
    from mmfuse.serve.auth import ENV_API_KEY
    from mmfuse.serve.protocol import ConnectionLimits

    api_key = args.api_key or os.environ.get(ENV_API_KEY) or None
    if api_key is None and args.host not in LOOPBACK:
        print(
            f"mmfuse serve: warning: listening on {args.host} with no API key: anyone who can "
            f"reach port {args.port} can use the model (set {ENV_API_KEY})",
            file=sys.stderr,
        )

    runner.serve(
        args.model_dir,
        args.host,
        args.port,
        args.workers,
        max_upload_bytes=max(1, round(args.max_upload_mb * 2**20)),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        device=device,
        torch_threads=args.torch_threads,
        limits=ConnectionLimits(args.header_timeout, args.body_timeout, args.max_connections),
        api_key=api_key,
        cors_origins=args.cors_origin,
        log_level=args.log_level,
    )
    return EXIT_OK


def _at_least(low, kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum of {low}")
        return value

    return parse


def _origin(text: str) -> str:
    from mmfuse.serve.auth import check_origin

    try:
        return check_origin(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text: str) -> int:
    port = _at_least(0, int)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535)")
    return port
