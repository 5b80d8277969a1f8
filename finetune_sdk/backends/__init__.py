"""Training backends: where the training program runs (see base.py for the seam)."""
