"""The loop and its decisions: the reconciler, the planner, status, naming, the rollout engines.

This room defines the interface the outer rooms implement (`interface`: `Driver`,
`DriverContext`, `Placement`; `secrets.SecretStore`; `reconciler.Claims`), so it imports
none of them: drivers, clients, claims and the operator import the loop, never the reverse.
Everything here but `reconciler` is pure.
"""
