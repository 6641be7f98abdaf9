"""Ships `model.py`, the Python-backend model `avserve.triton` places in shadow repositories.

`model.py` is a file for Triton to load, not a module for avserve to import.
"""

from pathlib import Path

MODEL_PY = Path(__file__).with_name("model.py")
