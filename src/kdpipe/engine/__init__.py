"""Engine: device/precision runtime, optimisation recipe, training loop and inference."""
