"""The pure core: events, features, models, calibration, the pipeline, alerts and the
checkpoint codec. It imports no Redis client and nothing of the runtime, the Redis layer or
the applications (tests/test_layers.py holds it)."""
