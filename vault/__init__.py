"""Civis Vault: the data side.

Encrypts records under per-transaction keys derived from three destroyable
secrets, stores them in PostgreSQL, builds Merkle trees over uploads, and
erases by destroying keys. It never speaks HTTP and never runs consensus:
`api/` and `ledger_bridge/` sit on either side of it.
"""
