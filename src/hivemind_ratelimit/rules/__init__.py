"""Rule files (the envoyproxy/ratelimit format plus Hivemind's extensions)."""
