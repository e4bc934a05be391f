"""Routers: each translates HTTP to one vault or ledger call, and nothing more."""
