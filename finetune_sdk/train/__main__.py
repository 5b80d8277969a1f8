"""Command-line entry of the training program."""

from __future__ import annotations

import argparse
import sys

from ..errors import FineTuneError
from ..spec import JobSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_sdk.train", description=__doc__)
    parser.add_argument("--spec", required=True, help="path to the job spec JSON")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args = parser.parse_args(argv)
    from .program import run

    try:
        run(JobSpec.load(args.spec), resume=args.resume)
    except FineTuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
