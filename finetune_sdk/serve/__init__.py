"""Serving: the generation engine and the HTTP server program (``python -m finetune_sdk.serve``)."""
