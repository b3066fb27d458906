"""Dataset tools for wtivision: importers, validation, dedupe, splits, manifests and synthetic generators.
Used for training only; never imported by the runtime package."""
