"""Deployers turn an artifact into a running endpoint and return a Predictor bound to it."""
