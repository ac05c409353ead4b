"""Notebooks that look inside a running nest of learning levels (see README.md here)."""
