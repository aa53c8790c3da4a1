"""Placeholder: filled in by the shufflenet family work."""
