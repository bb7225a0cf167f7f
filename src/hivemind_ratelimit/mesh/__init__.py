"""The mesh: peers find each other, share counters as CRDTs, detect failures.

membership.py  SWIM-style member states (pure)
protocol.py    the per-node protocol core: sync, full state, probes (pure, clock passed in)
transport.py   gRPC streams, handshake and dialing that drive the core (asyncio)
"""
