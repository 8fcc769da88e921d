"""Pure specs: everything the operator sends to the outside world, rendered from plain data.

Quadlet units and env files, cloud-init, Terraform inputs, Kubernetes objects and Caddy
routes, with the jinja2 templates beside them (`templates/`). No I/O; tested with `==`.
"""
