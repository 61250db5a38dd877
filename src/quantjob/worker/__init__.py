"""The quantization worker: runners, adapters, calibration, processors, observers, savers, launcher."""
