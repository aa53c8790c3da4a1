"""Placeholder: filled in by the squeezenet family work."""
