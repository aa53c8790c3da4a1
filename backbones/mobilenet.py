"""Placeholder: filled in by the mobilenet family work."""
