"""The layer-wise loop: calibration data, observers, quantizers, smoothing math and the runner."""
