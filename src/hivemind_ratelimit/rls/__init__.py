"""Envoy's Rate Limit Service (RLS v3): protobuf conversion, servicer, gRPC server."""
