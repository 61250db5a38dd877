"""Readers of finished outputs: each format's forward and the perplexity that scores it."""
