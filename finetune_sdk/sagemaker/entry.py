"""The script a SageMaker training job runs (shipped as ``train_entry.py`` beside the SDK's source)."""

import sys

from finetune_sdk.train.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
