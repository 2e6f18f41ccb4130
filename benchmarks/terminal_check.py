"""What ``batchtune search`` looks like in an 80-column terminal: runs a search inside tmux and checks the screen.

Starts a detached tmux session of 80x50, runs a small search of ``--task`` there (rich's live display,
since the pane is a terminal), waits for it to end, captures the whole pane history with wrapped lines
joined (``capture-pane -J``), prints it with each line's width, and exits 1 when a line is wider than
80 columns, a phase or trial line is missing, or a raw log line ("WARNING batchtune...") shows.

    PYTHONPATH=. python benchmarks/terminal_check.py
    PYTHONPATH=. python benchmarks/terminal_check.py --task examples/digits_cnn.py --args "--epochs 1 --budget 6"
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
EXPECTED = ("done loading and dry-running", "done speed and memory", "batch doctor:", "trial 0 ",
            "done running the trials", "Recommended: batch size", "EXIT=0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=str(HERE / "tests" / "tasks" / "tiny_mlp.py"))
    parser.add_argument("--args", default="--budget 8 --epochs 1 --threads 1 --no-plots --norms batch,none")
    parser.add_argument("--timeout", type=float, default=300)
    opts = parser.parse_args()
    if shutil.which("tmux") is None:
        print("tmux is not installed (apt-get install tmux)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="batchtune_tmux_"))
    session = f"batchtune_check_{os.getpid()}"
    python_path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")]))
    inner = (f"cd {shlex.quote(str(work))} && PYTHONPATH={shlex.quote(python_path)} {shlex.quote(sys.executable)} "
             f"-m batchtune search {shlex.quote(str(Path(opts.task).resolve()))} {opts.args}; echo EXIT=$?; sleep 600")
    start = time.monotonic()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "50", "bash", "-c", inner], check=True)
    try:
        screen = ""
        while time.monotonic() - start < opts.timeout:
            time.sleep(1.0)
            screen = subprocess.run(["tmux", "capture-pane", "-t", session, "-p", "-J", "-S", "-"],
                                    capture_output=True, text=True, check=True).stdout
            if "EXIT=" in screen:
                break
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
        shutil.rmtree(work, ignore_errors=True)
    lines = [line.rstrip() for line in screen.splitlines()]
    print(f"captured after {time.monotonic() - start:.0f} s (tmux 80x50, wrapped lines joined):")
    for line in lines:
        if line:
            print(f"{len(line):3d} | {line}")
    problems = [f"{len(line)} columns: {line}" for line in lines if len(line) > 80]
    problems += [f"missing: {text!r}" for text in EXPECTED if text not in screen]
    problems += [f"raw log line: {line}" for line in lines if line.startswith(("WARNING batchtune", "INFO batchtune"))]
    for p in problems:
        print("FAIL", p)
    print("ok: every line fits 80 columns" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
