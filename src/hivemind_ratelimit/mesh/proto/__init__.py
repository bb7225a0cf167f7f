"""Generated from proto/hivemind/mesh/v1/mesh.proto by `make proto`; do not edit."""
