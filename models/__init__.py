"""Model specs (TOML). This file only makes them installable as `detector.models` data."""
