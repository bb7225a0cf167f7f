"""Sans-I/O core: clock, windows, grow-only counters and the decision logic.

Nothing in this package opens a socket, touches asyncio or reads the wall clock.
"""
