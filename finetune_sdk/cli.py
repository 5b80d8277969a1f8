"""The ``finetune-sdk`` command: demo, train, preview, estimate, eval, predict, serve."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

from .errors import ConfigError, FineTuneError


def _template_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="counsel-sample", help="csv/json/jsonl/parquet file, Hub id, or 'counsel-sample'")
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name, local directory or Hub id")
    p.add_argument("--system", help="system format string, e.g. 'You are a helpful assistant.'")
    p.add_argument("--user", help="user format string over columns, e.g. '{questionText}'")
    p.add_argument("--assistant", help="assistant format string, e.g. '{answerText}'")
    p.add_argument("--prompt", help="plain template prompt (base models), instead of --user/--assistant")
    p.add_argument("--completion", help="plain template completion")
    p.add_argument("--messages-column", help="train on a column of chat messages instead")
    p.add_argument("--optional", action="append", default=[], metavar="COLUMN",
                   help="a prompt column that rows may leave empty (repeatable), e.g. questionTitle")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="runs/finetune")
    p.add_argument("--method", default="lora", choices=["lora", "qlora", "full"])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--merge", action="store_true", help="also write merged/ weights")
    p.add_argument("--eval-loss", default="epoch", choices=["epoch", "end", "off"],
                   help="when to compute the eval split's loss (default: after every epoch)")


def _lora(args: argparse.Namespace) -> dict[str, Any]:
    return {"r": args.lora_r, "alpha": 2 * args.lora_r}  # FineTuner validates it (ConfigError, exit 2)


def _training(args: argparse.Namespace) -> dict[str, Any]:
    return {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size, "merge": args.merge,
            "eval_loss": args.eval_loss}


def _template(args: argparse.Namespace) -> Any:
    from .template import PromptTemplate

    if args.messages_column:
        return PromptTemplate.messages(args.messages_column)
    if args.prompt or args.completion:
        return PromptTemplate.plain(args.prompt or "", args.completion or "", optional=args.optional)
    if not args.user and not args.assistant and args.data == "counsel-sample":
        from .demo import COUNSEL_TEMPLATE

        return COUNSEL_TEMPLATE
    return PromptTemplate.chat(user=args.user or "", assistant=args.assistant or "", system=args.system,
                               optional=args.optional)


def _tuner(args: argparse.Namespace, **extra: Any) -> Any:
    from .tuner import FineTuner

    return FineTuner(args.model, args.data, _template(args), max_length=args.max_length,
                     eval_fraction=args.eval_fraction, seed=args.seed, **extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune-sdk", description="Fine-tune a small LLM and serve it.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fine-tune the embedded model on the bundled data; show before/after")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--epochs", type=float, default=None)

    train = sub.add_parser("train", help="fine-tune a model and write an artifact directory")
    _template_args(train)
    _training_args(train)
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")

    preview = sub.add_parser("preview", help="show rendered examples with trained tokens marked, and lint them")
    _template_args(preview)
    preview.add_argument("-n", type=int, default=3)

    predict = sub.add_parser("predict", help="generate with a trained artifact, or with a server (--url)")
    predict.add_argument("artifact", nargs="?", help="the artifact directory (leave out with --url)")
    predict.add_argument("input", help="text for the template's prompt column, or a JSON object of columns")
    predict.add_argument("--url", help="an endpoint that speaks /invocations, e.g. http://127.0.0.1:8080")
    predict.add_argument("--api-key", default=None, help="the server's key (with --url)")
    predict.add_argument("--max-new-tokens", type=int, default=None)
    predict.add_argument("--temperature", type=float, default=None)

    estimate = sub.add_parser("estimate", help="tokens, steps, time and cost of a training run, before running it")
    _template_args(estimate)
    _training_args(estimate)
    estimate.add_argument("--where", help="an instance type or throughput-table key (default: time a few steps here)")
    estimate.add_argument("--throughput", type=float, help="real training tokens/s, instead of the probe or table")
    estimate.add_argument("--serving-instance", help="endpoint instance type to price serving on, e.g. ml.g5.xlarge")
    estimate.add_argument("--requests-per-second", type=float, help="what that endpoint sustains (measured)")
    estimate.add_argument("--api-price", type=float, nargs=2, metavar=("INPUT", "OUTPUT"),
                          help="a hosted API's USD per million input and output tokens")

    evaluate = sub.add_parser("eval", help="score an artifact (or a server) on held-out rows; --base compares")
    evaluate.add_argument("artifact", help="the artifact directory (its template; its run's eval rows by default)")
    evaluate.add_argument("--data", help="rows to evaluate on (csv/json/jsonl/parquet); default: the run's eval split")
    evaluate.add_argument("--url", help="evaluate the server at this URL instead of loading the artifact here")
    evaluate.add_argument("--api-key", default=None, help="the server's key (with --url)")
    evaluate.add_argument("--base", action="store_true", help="also evaluate the base model and compare")
    evaluate.add_argument("--gate", action="append", default=[], metavar="METRIC=MIN_GAIN",
                          help="with --base: fail (exit 1) unless tuned - base >= MIN_GAIN, e.g. label_accuracy=0.2")
    evaluate.add_argument("--label-column", help="column with each row's true label (default: detected)")
    evaluate.add_argument("--max-new-tokens", type=int, default=64)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--out", help="write comparison.md/.json/.png (or report.json) into this folder")

    serve = sub.add_parser("serve", help="serve an artifact (or a base model) over HTTP: /invocations and the "
                                         "OpenAI API")
    serve.add_argument("artifact", nargs="?", help="the artifact directory a training run wrote")
    serve.add_argument("--model", default=None, help="serve this base model instead of an artifact")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (needed off loopback)")

    args = parser.parse_args(argv)
    if args.command == "predict" and (args.artifact is None) == (args.url is None):
        parser.error("predict needs either ARTIFACT (in this process) or --url URL (a server), not both")
    if args.command == "eval" and args.gate and not args.base:
        parser.error("--gate compares against the base model; add --base")
    try:
        if args.command == "eval":
            from .evaluate.report import parse_gate

            args.gate = parse_gate(args.gate)  # a malformed gate fails now, not after both models have run
        return _dispatch(args)
    except FineTuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # not Python's exit status 1, which `eval` keeps for a failed gate
        traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {exc} (the traceback above shows where)", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.output, **({"epochs": args.epochs} if args.epochs else {}))
    elif args.command == "train":
        tuner = _tuner(args, output_dir=args.output, method=args.method, lora=_lora(args), training=_training(args))
        artifact = tuner.train(resume=args.resume)
        print(json.dumps({"artifact": str(artifact.path), **artifact.metrics}, indent=2, default=str))
    elif args.command == "estimate":
        tuner = _tuner(args, output_dir=args.output, method=args.method, lora=_lora(args), training=_training(args))
        print(tuner.estimate(args.where, throughput=args.throughput, serving_instance=args.serving_instance,
                             requests_per_second=args.requests_per_second,
                             api_price_per_million=tuple(args.api_price) if args.api_price else None))
    elif args.command == "eval":
        from .evaluate.cli import run_eval

        return run_eval(args)
    elif args.command == "preview":
        _tuner(args).preview(args.n)
    elif args.command == "predict":
        from .predict import Predictor

        source = _predict_input(args.input)
        generation = {k: v for k, v in (("max_new_tokens", args.max_new_tokens),
                                        ("temperature", args.temperature)) if v is not None}
        if "temperature" in generation:
            generation["do_sample"] = True
        predictor = Predictor.from_url(args.url, api_key=args.api_key) if args.url else Predictor.local(args.artifact)
        with predictor:
            print(predictor.predict(source, **generation).text)
    elif args.command == "serve":
        from .serve.__main__ import main as serve_main

        target = [args.artifact] if args.artifact else []
        target += ["--model", args.model] if args.model else []
        extra = ["--api-key", args.api_key] if args.api_key else []
        return serve_main([*target, "--host", args.host, "--port", str(args.port), *extra])
    return 0


def _predict_input(text: str) -> Any:
    """Text for the prompt column, or, when it starts with '{', a JSON object of columns."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the input starts with '{{' but is not a JSON object ({exc.msg} at character {exc.pos}); "
                          'give columns as valid JSON, e.g. \'{"questionText": "..."}\'') from exc


if __name__ == "__main__":
    sys.exit(main())
