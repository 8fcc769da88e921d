"""Drivers: one module per external system, effects only.

Each implements `controller.loop.interface.Driver` (``observe`` / ``apply`` / ``delete``,
idempotent and safe to repeat after a crash at any line), renders what it sends with
`controller.specs`, talks through `controller.clients`, and raises `controller.errors`
types only. `registry` picks the driver for each component, `platforms` builds a
Platform's shared-service drivers.
"""
