"""Names of the demo's stages, in order (kept apart so the CLI can list them without importing
the whole demo)."""

STAGES = ("store", "reveal", "explain", "all")
