"""Placeholder: filled in by the xception family work."""
