"""Allocations and quotas: what a Project may take, with the API server as the only record.

`ledger` and `plan` decide on plain data; `store` reads and writes the ledgers
(ConfigMaps) with resourceVersions; `quotas` bounds what one namespace may take.
"""
