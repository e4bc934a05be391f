"""The PBFT replica core (Castro & Liskov, OSDI '99 / TOCS 2002) as a pure state machine.

Nothing in this package reads a clock, draws randomness, or touches a socket, a thread or a
file (tests/ledger_bridge/pbft/test_purity.py enforces the imports): time arrives as `now_ms`
arguments, and all effects leave through `Replica.ready()`.
"""
