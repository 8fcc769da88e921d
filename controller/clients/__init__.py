"""Transports: the one place that connects, pools, times out, caps bytes and translates errors.

Kubernetes (`kube`), SSH (`ssh`, with host keys in `hostkeys`), bounded HTTP reads
(`http`), and which addresses a Project may send the operator to at all (`targets`).
"""
