"""Placeholder: filled in by the resnext family work."""
