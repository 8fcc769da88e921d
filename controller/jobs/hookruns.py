"""Post-deploy hooks as detached runs: started once, found again, stopped at their timeout.

A hook may run for an hour (a migration); a reconcile pass must not wait for it, and an
operator killed while it runs must neither lose it nor start it a second time. So a hook
runs detached on the machine it belongs to, in a run directory named by the run's id
(``status.rollout.hooks[].runId``, recorded in status before the run starts), and each
pass *follows* it with one short command, `FOLLOW`:

- no directory: never started, so it starts now (``setsid``, ``timeout -k 5``), and the
  directory records its pid, then its output and exit code;
- an ``exit`` file: finished, with the tail of its output;
- a live process whose command line names the directory: running (for how long, by the
  machine's own clock; past its timeout and a grace, it is stopped);
- a directory with no pid yet, younger than `STARTING_SECONDS`: starting (a loaded machine
  can take seconds to launch it; calling that lost failed a hook that went on to succeed);
- anything else, once the ``exit`` file is looked for again (a run that finished between
  the two looks wrote it before its process ended): it ended without a result (killed,
  the machine restarted): failed, never started again.

The same script serves the operator's machine (runtime local) and a host over SSH
(runtime quadlet: the command is ``podman exec`` into the new colour). Every part of a
hook's command is an argument, never shell text: nothing in it is evaluated.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime, timedelta

from controller.loop.secrets import clip
from schemas.project import HookRun

# Past its own timeout (``timeout -k 5`` ends it first), the operator stops a run after this long.
GRACE_SECONDS = 30
# A run directory with no pid yet is starting for this long (its launcher may be slow); then it is lost.
STARTING_SECONDS = 60
RUN_ID = re.compile(r"^[0-9a-f]{12}$")

# $1 mode (follow | stop), $2 run directory, $3 timeout in seconds, $4 launcher (setsid, or
# systemd-run where the login session's processes end with it: an SSH command's do), then the
# command. A run's output is read from its end (16 KiB; status keeps less); run directories
# of the same unit older than 7 days are removed when the next run starts.
FOLLOW = r"""
mode=$1 d=$2 t=$3 launcher=$4 starting=STARTING_SECONDS; shift 4
alive() {
  p=$(cat "$d/pid" 2>/dev/null) && [ -n "$p" ] && tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | grep -qxF -- "$d"
}
if [ "$mode" = stop ]; then
  # The exit file first: a wrapper that has written its pid but not yet started the command sees it
  # and starts nothing; one that started it already is alive below. (Each writes, then reads the other.)
  # A run that ended (or was stopped before) has its exit file, and nothing of it runs.
  [ -f "$d/exit" ] && { echo stopped; exit 0; }
  { echo 137 >"$d/exit.tmp" && mv "$d/exit.tmp" "$d/exit"; } 2>/dev/null
  if alive; then
    i=0; while [ ! -s "$d/tpid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    # timeout(1) leads a process group of its own (the command's); the wrapper leads the session.
    kill -KILL "-$(cat "$d/tpid" 2>/dev/null)" 2>/dev/null; kill -KILL "-$p" 2>/dev/null
  fi
  # What runs elsewhere (inside a container, under podman exec) carries the run's id in its environment.
  # One whose client was just killed may still be starting there (conmon goes on without the client):
  # look until nothing has carried the id for 3 s (at most 12 s).
  quiet=0 i=0
  while [ $quiet -lt 12 ] && [ $i -lt 48 ]; do
    found=0
    for q in /proc/[0-9]*; do
      tr '\0' '\n' <"$q/environ" 2>/dev/null | grep -qxF "CODEB_HOOK_RUN=${d##*/}" \
        && { kill -KILL "${q#/proc/}" 2>/dev/null; found=1; }
    done
    if [ $found = 1 ]; then quiet=0; else quiet=$((quiet + 1)); fi
    i=$((i + 1)); sleep 0.25
  done
  echo stopped; exit 0
fi
finished() { [ -f "$d/exit" ] && { echo "exit $(cat "$d/exit")"; tail -c 16384 "$d/output" 2>/dev/null; }; }
finished && exit 0
if [ -d "$d" ]; then
  if alive; then echo "running $(($(date +%s) - $(stat -c %Y "$d/pid")))"
  # It finished between the first look and this one: its exit file is written before it exits.
  elif finished; then :
  # Made, but its wrapper has not written its pid yet (a loaded machine, a slow systemd scope).
  elif [ ! -s "$d/pid" ] && [ $(($(date +%s) - $(stat -c %Y "$d"))) -lt $starting ]; then echo starting
  else echo lost; tail -c 16384 "$d/output" 2>/dev/null; fi
  exit 0
fi
mkdir -p "$d" || exit 1
find "${d%/*}" -mindepth 1 -maxdepth 1 -type d -mtime +7 -exec rm -rf {} + 2>/dev/null
run='echo $$ >"$1/pid"; d=$1; shift; [ -e "$d/exit" ] && exit 0
  CODEB_HOOK_RUN=${d##*/} timeout -k 5 "$@" >"$d/output" 2>&1 </dev/null & echo $! >"$d/tpid"
  wait $!; echo $? >"$d/exit.tmp"; mv "$d/exit.tmp" "$d/exit"'
# A scope of its own (systemd-run --scope execs the command itself: nothing in it is expanded)
# outlives the login session that started it.
scope=; [ "$launcher" = systemd-run ] && scope="systemd-run --quiet --collect --scope --unit=codeb-hook-${d##*/}"
setsid $scope sh -c "$run" hook "$d" "$t" "$@" </dev/null >/dev/null 2>&1 &
i=0; while [ ! -s "$d/pid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
echo started
""".replace("STARTING_SECONDS", str(STARTING_SECONDS))


def follow_argv(mode: str, run_dir: str, timeout: int, command: list[str], launcher: str = "setsid") -> list[str]:
    """The argv that follows (or stops) the run in ``run_dir``: ``sh -c FOLLOW``, every value an argument."""
    return ["sh", "-c", FOLLOW, "codeb-hook", mode, run_dir, str(timeout), launcher, *command]


def stop_all_line(runs: str) -> str:
    """A shell line that stops every run still going under ``runs`` and removes their directories (what they
    belong to is going)."""
    stop = f'sh -c {shlex.quote(FOLLOW)} codeb-hook stop "${{run%/}}" 0 -'  # $run: the loop's, on the machine
    return f'for run in {shlex.quote(runs)}/*/; do [ -d "$run" ] && {stop} >/dev/null; done; rm -rf {shlex.quote(runs)}'


def judge(
    run: HookRun, timeout: int, answer: str, secret_values: frozenset[str], now: datetime | None = None
) -> tuple[HookRun, bool]:
    """What `FOLLOW` answered, as the run's record; and whether it is overdue and must be stopped."""
    first, _, output = answer.partition("\n")
    first = first.strip()
    kept = {"run_id": run.run_id, "started_at": run.started_at}
    if first.startswith("exit "):
        code = first.removeprefix("exit ")
        text = output.rstrip() + f"\n(exit code {code})"
        if code == "124":
            text += f"\ntimed out after {timeout} s"
        return hook_run(run.name, code == "0", text, secret_values).model_copy(update=kept), False
    if first in ("started", "starting"):
        return run, False
    if first.startswith("running "):
        # Seconds since it started, by the clock of the machine it runs on (the operator's may differ,
        # and the run may have started long after it was recorded).
        elapsed = int(first.removeprefix("running ")) if first.removeprefix("running ").isdigit() else 0
        if elapsed > timeout + GRACE_SECONDS:
            message = f"still running {elapsed} s after it started (timeout {timeout} s): stopped"
            return hook_run(run.name, False, message, secret_values).model_copy(update=kept), True
        return run, False
    if first == "lost":
        message = (output.rstrip() + "\n" if output.strip() else "") + (
            "its process ended without a result (killed, or the machine restarted); not started again"
        )
        return hook_run(run.name, False, message, secret_values).model_copy(update=kept), False
    # No answer this time (the machine did not say, or could not make the run's directory): asked
    # again next pass, until the run is older than its timeout and grace; then it failed to start.
    recorded = run.started_at or (now or datetime.now(UTC))
    if (now or datetime.now(UTC)) > recorded + timedelta(seconds=timeout + GRACE_SECONDS):
        said = first or "no answer"
        message = f"could not be started or followed within {timeout + GRACE_SECONDS} s ({said})"
        return hook_run(run.name, False, message, secret_values).model_copy(update=kept), False
    return run, False


def valid_run_id(run: HookRun) -> str:
    """The run's id, checked before it names a directory (status is the operator's, but never trusted)."""
    if run.run_id is None or not RUN_ID.match(run.run_id):
        raise ValueError(f"hook run {run.name} has no valid run id")
    return run.run_id


OUTPUT_CHARS = 1500


def hook_run(name: str, ok: bool, output: str, secret_values: frozenset[str]) -> HookRun:
    """A hook's outcome with the tail of its output, credentials redacted."""
    tail = clip(output.strip(), secret_values, OUTPUT_CHARS, tail=True)
    return HookRun(name=name, result="Succeeded" if ok else "Failed", finished_at=datetime.now(UTC), message=tail)
