"""Placeholder: filled in by the densenet family work."""
