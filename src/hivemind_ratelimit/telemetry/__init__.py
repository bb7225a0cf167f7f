"""Telemetry: plain counters on the request path (stats), OpenTelemetry observable
instruments over them (instruments, metrics), Prometheus text (prometheus), tracing of
ShouldRateLimit calls (tracing), the providers built from settings (otel), and logs
(logging). See docs/observability.md."""
