"""Verify: does a corrected model still rely on the artifact? A reliance certificate with
intervals and a verdict."""

__all__: list[str] = []
