"""Evaluating generation: variants over task sets, metrics with uncertainty, reports and plots, gate calibration."""
