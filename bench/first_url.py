"""Time from the README's first command to a served URL: cold (new HOME, fresh clone, nothing cached), then warm.

Clones this repository into a temporary directory, points HOME there (so pip, Go and
`~/.cache/codeb` start empty), runs `deploy/dev up`, waits for its `serving:` line and
for the page to answer, stops it with `codeb down`, then runs `deploy/dev up` once more.
Prints both times and where the time went (`deploy/dev`'s own steps are timestamped).

  .venv/bin/python bench/first_url.py [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_up(clone: Path, env: dict[str, str], log: Path, timeout: float) -> tuple[float, str]:
    """Seconds until `deploy/dev up` prints its URL and the page answers; then `codeb down`."""
    started = time.monotonic()
    with log.open("w") as out:
        up = subprocess.Popen(["deploy/dev", "up"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while time.monotonic() - started < timeout:
            found = re.search(r"serving: (https://\S+)", log.read_text())
            if found:
                page = subprocess.run(["curl", "-sk", "--max-time", "10", found.group(1)], capture_output=True,
                                      text=True)  # fmt: skip
                if "Hello, CodeB" in page.stdout:
                    return time.monotonic() - started, found.group(1)
            if up.poll() is not None:
                raise SystemExit(f"deploy/dev up exited with {up.returncode}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        raise SystemExit(f"no URL within {timeout:.0f}s:\n{log.read_text()[-3000:]}")
    finally:
        subprocess.run([str(clone / ".venv" / "bin" / "codeb"), "down"], cwd=clone, env=env, check=False)
        up.wait(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the clone and its HOME")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="codeb-first-url-"))
    clone, home = root / "codeb", root / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # A new HOME empties every cache; how this machine reaches its registries stays.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODEB_", "VIRTUAL_ENV", "KUBECONFIG"))}
    env |= {"HOME": str(home), "PYENV_ROOT": os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))}
    for name in ("GOFLAGS", "GOPROXY"):
        value = subprocess.run(["go", "env", name], capture_output=True, text=True).stdout.strip()
        if value:
            env[name] = value
    try:
        cold, url = timed_up(clone, env, root / "cold.log", timeout=3600)
        warm, _ = timed_up(clone, env, root / "warm.log", timeout=600)
        print(f"cold (new HOME, fresh clone, nothing cached): {cold:6.1f} s to {url}")
        print(f"warm (the same clone and HOME again):         {warm:6.1f} s")
        print("cold run's steps:")
        for line in (root / "cold.log").read_text().splitlines():
            if line.startswith(("[deploy/dev]", "[")):
                print(f"  {line}")
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
