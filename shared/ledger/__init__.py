"""The ledger domain: money, commands, API keys and principals, the use cases, the audit."""
