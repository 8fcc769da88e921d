"""How a new release replaces the serving one: one interface, one engine per runtime, both recorded in status.

`engine`: the interface the reconciler talks to (`Rollout`) and `start`, which picks the
engine once per pass. `bluegreen` (with `colours`, its facts and decisions): two colours
behind Caddy, switched by the operator after a health gate (runtimes local and quadlet).
`rolling`: the Deployment's own rolling update (kubernetes). `records`: the history and
notices both write.
"""
