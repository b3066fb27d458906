"""Training entry points (ultralytics, offline). Never imported by the runtime package."""
