"""The seeded PBFT simulator and its checkers."""
