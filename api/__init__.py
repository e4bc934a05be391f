"""Civis Vault HTTP API and command line: thin routes over `vault/` and `ledger_bridge/`."""
