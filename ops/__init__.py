"""Operator tooling run from the repository root: ``python3 -m ops.<tool>``."""
