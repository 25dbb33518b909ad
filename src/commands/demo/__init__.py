"""The one-command demo."""
