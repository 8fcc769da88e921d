"""How a new release replaces the serving one, one engine per runtime, both recorded in the Project status.

`bluegreen`: two colours behind Caddy, switched by the operator after a health gate
(processes and quadlet). `rolling`: the Deployment's own rolling update (kubernetes),
recorded in the same history. `engine_for` picks one per pass.
"""
