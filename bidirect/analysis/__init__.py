"""The analyses of trained models and runs: probing, knowledge capacity, speed, seeds pooled."""
