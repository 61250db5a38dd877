"""The model as the loop reads it: families' adapters, checkpoint headers and tensors (FP8 included), the decoder layer and its experts, the memory estimate, the demo models."""
