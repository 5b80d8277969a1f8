"""Command-line entry of the training program.

Inside a SageMaker training container (SM_MODEL_DIR is set) the spec's paths are mapped onto the
container's layout first, and ``--name value`` hyperparameters override training settings.

SIGTERM (``cancel()``, torchrun stopping its workers, SageMaker stopping the job) raises ``Cancelled``
in the program, so every cleanup runs (no staging folder is left) and the status reads ``cancelled``;
the process then ends by SIGTERM, as whoever sent it expects.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..errors import FineTuneError
from ..spec import JobSpec


class Cancelled(BaseException):
    """The training process was asked to stop. Not an Exception: nothing may catch it as a failure."""


def _cancel(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a repeated signal must not interrupt the cleanup
    raise Cancelled(f"stopped by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_sdk.train", description=__doc__)
    parser.add_argument("--spec", required=True, help="path to the job spec JSON")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args, hyperparameters = parser.parse_known_args(argv)
    in_container = bool(os.environ.get("SM_MODEL_DIR"))
    if hyperparameters and not in_container:
        parser.error(f"unrecognized arguments: {' '.join(hyperparameters)}")
    signal.signal(signal.SIGTERM, _cancel)
    try:
        if in_container:
            from .container import run_in_container

            run_in_container(Path(args.spec), os.environ, hyperparameters)
        else:
            from .program import run

            run(JobSpec.load(args.spec), resume=args.resume)
    except FineTuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
