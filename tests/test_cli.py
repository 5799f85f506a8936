"""Behaviour of the ``lmserv`` command as a whole, whatever the subcommand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _helpers import cli_env


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    # `lmserv list | head`: the reader is gone before the command writes.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmserv", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(tmp_path),
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode == 141
