"""Noise schedules, samplers and the sampling loop."""
