"""Telemetry: plain counters on the request path, exposition at scrape time."""
