"""Segmentation architectures, the model registry and weight sources."""
