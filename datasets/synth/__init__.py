"""Fixed-seed synthetic data generators (stamped serials, headstamps, object scenes)."""
