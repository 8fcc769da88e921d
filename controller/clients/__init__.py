"""Transports: the one place that connects, pools, times out, caps bytes and translates errors.

Kubernetes (`kube`), SSH (`ssh`, with host keys in `hostkeys`), PostgreSQL (`postgres`),
Redis (`redis`), S3 on MinIO (`s3`), Caddy's admin API (`caddy`), bounded HTTP reads from
endpoints a Project controls (`http`), and which addresses a Project may send the operator
to at all (`targets`). Each turns its library's errors into `controller.errors` with no
server text that could carry a credential or a tenant's statement.
"""
