"""Command-line entry of the training program.

Inside a SageMaker training container (SM_MODEL_DIR is set) the spec's paths are mapped onto the
container's layout first, and ``--name value`` hyperparameters override training settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import FineTuneError
from ..spec import JobSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_sdk.train", description=__doc__)
    parser.add_argument("--spec", required=True, help="path to the job spec JSON")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args, hyperparameters = parser.parse_known_args(argv)
    in_container = bool(os.environ.get("SM_MODEL_DIR"))
    if hyperparameters and not in_container:
        parser.error(f"unrecognized arguments: {' '.join(hyperparameters)}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
