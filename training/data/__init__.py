"""Datasets for training: readers for user data (`records`) and a synthetic generator (`synth`).

Both modules are torch-free so that `avserve data ...` works on a serving-only install.
"""
