"""The one training program (``python -m finetune_sdk.train --spec spec.json``)."""
