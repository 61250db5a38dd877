"""The contract: QuantJob and modelslim_v1 models, the algorithm catalogue, the compatibility check.

Imports pydantic and yaml only (no torch, no kopf)."""
