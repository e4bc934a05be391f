"""The ledger side: a PBFT replica, its storage and transport, the consent contracts, and the
client the vault uses to submit transactions and verify commit certificates."""
