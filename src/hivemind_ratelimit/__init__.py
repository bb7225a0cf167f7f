"""Hivemind: a distributed rate limit service for Envoy Proxy."""

__version__ = "0.1.0"
