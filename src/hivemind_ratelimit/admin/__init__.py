"""The HTTP admin endpoint: health, readiness, metrics, /json, /rlconfig."""
