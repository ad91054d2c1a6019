"""Stop a child process at one known point of its work, whatever the machine's load: right after it renames a file
into place at a given path (a complete checkpoint, a cell's results.json), the next audited event of that process
sends it a signal. Tests that polled for the file and then killed the process raced it: a busy machine let a tiny
run finish first, or the kill land half way into the next step."""

from __future__ import annotations

import os
import signal
from pathlib import Path

# sitecustomize.py on the child's PYTHONPATH: every Python process started with `cut_env` arms it; only the one that
# renames something to CUT_AFTER fires.
HOOK = """
import os, sys
_cut, _signal = os.environ.get("CUT_AFTER"), int(os.environ.get("CUT_SIGNAL", "15"))
if _cut:
    _state = ["waiting"]
    def _hook(event, args):
        if _state[0] == "renamed":
            _state[0] = "cut"  # os.kill is itself an audited event
            os.kill(os.getpid(), _signal)
        elif _state[0] == "waiting" and event == "os.rename" and os.fsdecode(args[1]) == _cut:
            _state[0] = "renamed"  # os.rename and os.replace: the rename itself happens after this returns
    sys.addaudithook(_hook)
"""


def cut_env(env: dict[str, str], after: Path, hooks: Path, sig: signal.Signals = signal.SIGTERM) -> dict[str, str]:
    """``env`` for a child that is sent ``sig`` right after it renames a file to ``after`` (``hooks``: a folder
    for the sitecustomize.py that does it)."""
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))
    return {**env, "CUT_AFTER": str(after), "CUT_SIGNAL": str(int(sig)), "PYTHONPATH": path}
