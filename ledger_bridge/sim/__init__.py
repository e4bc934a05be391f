"""The seeded PBFT simulator and its checkers (issue 3 item 7)."""
