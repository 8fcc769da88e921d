"""Ordinary use of the example application under `codeb up`: a few clients, every page, no failure.

    deploy/dev up &                      # prints: serving: https://hello.codeb.localhost:8443/
    .venv/bin/python bench/example_load.py https://hello.codeb.localhost:8443/ [--clients 4] [--seconds 60]

Each client asks in turn for ``/`` (the page, which reads the database, Redis and the bucket),
``/api/visit`` (a database insert and a Redis INCR) and ``/api/health`` for ``--seconds``, every
request with a 10 s timeout. Prints requests, failures (anything but a 2xx, or no answer) by
kind, and the latency percentiles.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx

PATHS = ("/", "/api/visit", "/api/health")


def client(base: str, until: float, latencies: list[float], failures: Counter[str], lock: threading.Lock) -> None:
    # *.localhost is loopback (as curl and browsers treat it; the system resolver may not): connect
    # there, naming the site in the TLS handshake and the Host header. The local CA is codeb up's
    # own: what is tested is the application, not the certificate chain.
    site = urlsplit(base)
    host = site.hostname or ""
    address = "127.0.0.1" if host == "localhost" or host.endswith(".localhost") else host
    origin = f"{site.scheme}://{address}:{site.port or 443}"
    with httpx.Client(verify=False, timeout=10, headers={"Host": site.netloc}) as http:
        turn = 0
        while time.monotonic() < until:
            path = PATHS[turn % len(PATHS)]
            turn += 1
            started = time.monotonic()
            try:
                answer = http.get(origin + path, extensions={"sni_hostname": host})
                failed = None if answer.is_success else f"{path} {answer.status_code}"
            except httpx.HTTPError as exc:
                failed = f"{path} {type(exc).__name__}"
            with lock:
                latencies.append(time.monotonic() - started)
                if failed:
                    failures[failed] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    lock = threading.Lock()
    until = time.monotonic() + args.seconds
    threads = [threading.Thread(target=client, args=(args.url, until, latencies, failures, lock))
               for _ in range(args.clients)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.seconds + 30)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(f"{args.clients} clients x {args.seconds:.0f} s on {args.url}: {len(latencies)} requests, "
          f"{sum(failures.values())} failed {dict(failures)}; "
          f"p50 {cuts[49] * 1000:.0f} ms, p99 {cuts[98] * 1000:.0f} ms")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
