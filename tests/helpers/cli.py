"""One way to run the ``graphwire`` command line in a test: as a child process, like a user."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def graphwire(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m graphwire ARGS`` in the repository root with this process's environment
    plus ``env``; its exit code, stdout and stderr (text). ``check`` raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "graphwire", *args],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


async def graphwire_async(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """:func:`graphwire` from a thread, so that a runner in this event loop keeps running."""
    return await asyncio.to_thread(graphwire, *args, env=env, timeout=timeout)
