"""How long a standby replica takes to act after the active one is SIGKILLed, ten times in a row.

    python bench/takeover.py             # 10 rounds
    python bench/takeover.py --rounds 3

Each round runs tests/apiserver/test_operator.py's scenario on a real API server (audited):
two `codeb operator` replicas peered with CODEB_PEERING_LIFETIME=10, four Projects settled by
the active one, SIGKILL, four more Projects; the figure is the time from the kill until the
standby resumes. Each round also checks that every Project settles with its claims held once
and that nothing the killed replica finished is written again. Prints each round, the median
and the worst, against the bound the lifetime sets (lifetime + 10 s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.apiserver.test_operator import AUDIT_WRITES, TAKEOVER_LIFETIME, takeover
from tests.conftest import start_cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="codeb-takeover-") as scratch:
        root = Path(scratch)
        cluster = start_cluster(root / "cluster", audit_policy=AUDIT_WRITES)
        took = []
        try:
            for round_ in range(args.rounds):
                namespace = f"takeover-{round_}"
                cluster.kubectl("create", "namespace", namespace)
                logs = root / namespace
                logs.mkdir()
                took.append(takeover(cluster, namespace, logs, f"takeover-{round_}"))
                print(f"round {round_ + 1}: standby acting {took[-1]:.1f} s after the kill", flush=True)
        finally:
            cluster.stop()
    bound = TAKEOVER_LIFETIME + 10
    print(
        f"takeover over {len(took)} rounds: median {statistics.median(took):.1f} s, worst {max(took):.1f} s "
        f"(lifetime {TAKEOVER_LIFETIME} s; bound {bound} s: {'met' if max(took) <= bound else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
