"""``python -m finetune_sdk.serve ARTIFACT_DIR``: serve an artifact over HTTP (local deployer, containers).

``python -m finetune_sdk.serve --model NAME`` serves a base model with no adapter instead (the embedded
``smollm2-135m-instruct``, a local model folder or a Hub id), its prompts rendered with the tokenizer's
chat template: a string input is one user message.

In a SageMaker container (``--sagemaker`` or ``FINETUNE_SDK_SAGEMAKER=1``) it follows the container
contract instead: SageMaker runs the image with the argument ``serve``, the model is in /opt/ml/model,
and the server listens on 0.0.0.0:8080 without an API key, because only SageMaker's endpoint, which
authenticates every caller, can reach that port.

Exit codes: 0 after a clean shutdown, 2 for a refused configuration (e.g. a public bind with no API
key), 1 when the artifact cannot be loaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, FineTuneError, MissingDependencyError
from .batcher import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS, DEFAULT_REQUEST_TIMEOUT_S

API_KEY_ENV = "FINETUNE_SDK_API_KEY"
SERVER_ID_ENV = "FINETUNE_SDK_SERVER_ID"  # echoed on /ping, so the process that started the server knows it is ours
SAGEMAKER_ENV = "FINETUNE_SDK_SAGEMAKER"
SAGEMAKER_MODEL_DIR = "/opt/ml/model"  # where SageMaker puts model.tar.gz's contents; SM_MODEL_DIR overrides
SAGEMAKER_COMMAND = "serve"  # the argument SageMaker runs an inference image with


def check_bind(host: str, api_key: str | None, sagemaker: bool = False) -> None:
    """Refuse to expose an unauthenticated model beyond this machine, except inside a SageMaker container."""
    if api_key or sagemaker or _is_loopback(host):
        return
    raise ConfigError(f"refusing to listen on {host!r} without an API key: anyone who can reach this machine "
                      f"could use the model; pass --api-key KEY (or set {API_KEY_ENV}), or bind to 127.0.0.1 "
                      f"(inside a SageMaker container, pass --sagemaker or set {SAGEMAKER_ENV}=1)")


def container_defaults(args: argparse.Namespace) -> None:
    """Fill in the SageMaker container contract: the model directory, 0.0.0.0 and port 8080 (or
    SAGEMAKER_BIND_TO_PORT), unless given explicitly."""
    if args.artifact in (None, SAGEMAKER_COMMAND):
        args.artifact = os.environ.get("SM_MODEL_DIR", SAGEMAKER_MODEL_DIR)
    args.host = args.host or "0.0.0.0"
    args.port = args.port or int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def stop_when_stdin_closes() -> None:
    """Stop this process once standard input reaches its end: the process that started the server holds the
    pipe's other end, so the server goes with it however it ends, SIGKILL included."""
    def watch() -> None:
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down gracefully; while loading, the process just ends

    threading.Thread(target=watch, name="finetune-sdk-stdin-watch", daemon=True).start()


def load_engine(artifact: str | None, model: str | None, device: str) -> Any:
    """The artifact's engine, or the base model's under a chat template that takes chat messages as they come."""
    from ..template import PromptTemplate
    from .engine import GenerationEngine

    if model is not None:
        return GenerationEngine.from_model(model, PromptTemplate.messages(), device=device)
    return GenerationEngine.from_artifact(artifact, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_sdk.serve",
                                     description="Serve a finetune_sdk artifact: SageMaker /invocations and "
                                                 "the OpenAI API.")
    parser.add_argument("artifact", nargs="?", help="the artifact directory a training run wrote (with "
                        f"--sagemaker: omitted or '{SAGEMAKER_COMMAND}' means {SAGEMAKER_MODEL_DIR})")
    parser.add_argument("--model", default=None, help="serve this base model instead of an artifact: an embedded "
                        "model name (smollm2-135m-instruct), a local model folder or a Hugging Face Hub id")
    parser.add_argument("--host", default=None, help="127.0.0.1 by default; 0.0.0.0 with --sagemaker")
    parser.add_argument("--port", type=int, default=None, help="8080 by default")
    parser.add_argument("--sagemaker", action="store_true", default=os.environ.get(SAGEMAKER_ENV) == "1",
                        help=f"run as a SageMaker inference container (or set {SAGEMAKER_ENV}=1): model from "
                             f"{SAGEMAKER_MODEL_DIR}, listen on 0.0.0.0:8080, no API key needed")
    parser.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--max-new-tokens-cap", type=int, default=1024)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--stop-with-stdin", action="store_true",
                        help="stop when standard input closes (a process that starts the server with a pipe as "
                             "its stdin takes the server down with it)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the model's arithmetic (default: torch's choice, one per core)")
    parser.add_argument("--no-batching", dest="batching", action="store_false",
                        help="generate one request at a time instead of batching concurrent requests")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="most inputs generated together in one batch")
    parser.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS,
                        help="how long the first request of a batch waits for others to join it")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help="requests that may wait; beyond this the server answers 503 with Retry-After")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                        help="seconds a batched request may wait and generate before it is answered 504")
    args = parser.parse_args(argv)
    if args.model is not None and (args.artifact is not None or args.sagemaker):
        parser.error("give either an ARTIFACT directory or --model NAME, not both")
    if args.sagemaker:
        container_defaults(args)
    elif args.artifact is None and args.model is None:
        parser.error("give the ARTIFACT directory to serve, or --model NAME for a base model (or --sagemaker "
                     "inside a SageMaker container)")
    if args.stop_with_stdin:
        stop_when_stdin_closes()
    host, port = args.host or "127.0.0.1", args.port or 8080
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        check_bind(host, api_key, args.sagemaker)
        try:
            import uvicorn

            from .app import create_app
        except ImportError as exc:
            raise MissingDependencyError(f"the server needs {exc.name}; install it with: "
                                         "pip install 'finetune-sdk[serve]'") from exc
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        engine = load_engine(args.artifact, args.model, args.device)
        engine.max_batch_size = args.max_batch_size  # one flag sizes both the batcher and the engine's chunks
        app = create_app(engine, api_key=api_key, max_new_tokens_cap=args.max_new_tokens_cap,
                         model_name=args.model or Path(args.artifact).resolve().name, batching=args.batching,
                         max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                         max_queue=args.max_queue, request_timeout_s=args.request_timeout,
                         server_id=os.environ.get(SERVER_ID_ENV))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FineTuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.sagemaker and not api_key:
        print(f"SageMaker container mode: serving {args.artifact} on {host}:{port} without an API key; "
              "SageMaker's endpoint authenticates callers", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
