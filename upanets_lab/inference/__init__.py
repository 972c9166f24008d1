"""Inference: a trained checkpoint as a model, its class names and its input normalisation (trained)."""
