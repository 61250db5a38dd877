"""llm-compressor as a benchmark baseline, run in a virtual environment of its own.

llm-compressor 0.14 pins transformers and compressed-tensors versions that conflict with this
project's environment, so it lives in ``bench/.venv-llmc`` (``venv.ensure_venv``) and runs in a
subprocess (``quantize.py``, executed with that venv's python): quantize a model directory with a
named recipe, save the result, and report what it did as JSON. Other benchmarks reuse it.
"""
