"""The reference server: ``langgraph dev`` (langgraph-api 0.16.7, in-memory runtime) from its own
venv (``scripts/oracle-venv.sh``, created once, git-ignored ``.oracle-venv/``), serving the
graphs of ``langgraph.json`` beside this file. Offline and without a licence key.

The session fixture ``oracle_url`` creates the venv (skipping the tests, with pip's words, only
when the package index cannot be reached), starts the server on a free port and stops it at the
end of the session.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from graphwire.processors.dev.broker import free_port

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("GRAPHWIRE_ORACLE_VENV", ROOT / ".oracle-venv"))
OFFLINE = re.compile(
    r"No matching distribution|Could not find a version that satisfies|Failed to establish a new "
    r"connection|Temporary failure in name resolution|Network is unreachable|Connection refused|"
    r"ConnectTimeout|ReadTimeout|Max retries exceeded|ProxyError|SSLError"
)
"""pip's words when the package index is out of reach (then the oracle tests skip)."""


def same_graph_library() -> list[str]:
    """The project's langgraph and langchain-core versions, pinned in the oracle's venv too:
    both servers run the graphs on the same library."""
    return [f"{name}=={importlib.metadata.version(name)}"
            for name in ("langgraph", "langchain-core")]


def ensure_venv() -> Path:
    """Create the oracle's venv once (a stamp of its requirements makes later calls instant);
    its ``langgraph`` command. Skips the calling test when pip cannot reach the package index,
    fails on any other install error."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "oracle-venv.sh"), *same_graph_library()],
        env={**os.environ, "ORACLE_VENV": str(VENV), "PYTHON": sys.executable},
        capture_output=True, text=True,
        timeout=900, check=False)
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        tail = "\n".join(line for line in said if "is ignored: it is neither" not in line)[-2000:]
        if OFFLINE.search(tail):
            pytest.skip(f"the oracle's venv cannot be created: the package index is out of "
                        f"reach ({tail.splitlines()[-1] if tail else 'no output'})")
        raise RuntimeError(f"scripts/oracle-venv.sh failed ({done.returncode}):\n{tail}")
    return VENV / "bin" / "langgraph"


def write_config(folder: Path) -> Path:
    """``langgraph.json`` of this folder with absolute paths (``langgraph dev`` resolves them
    from its working directory, which is a temporary folder so its in-memory persistence
    file ``.langgraph_api/`` lands there)."""
    config = orjson.loads((HERE / "langgraph.json").read_bytes())
    config["dependencies"] = [str(HERE)]
    config["graphs"] = {name: str(HERE / path.removeprefix("./"))
                        for name, path in config["graphs"].items()}
    path = folder / "langgraph.json"
    path.write_bytes(orjson.dumps(config))
    return path


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll ``GET /ok`` until it answers 200; fail with the server's log if it exits or never
    does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"langgraph dev exited {process.returncode}:\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"langgraph dev did not answer /ok in {timeout} s:\n"
                       f"{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="session")
def oracle_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of ``langgraph dev`` serving graphwire's built-in graphs (one server for
    the whole session; each test makes its own threads)."""
    langgraph = ensure_venv()
    folder = tmp_path_factory.mktemp("oracle")
    config = write_config(folder)
    port = free_port()
    log = folder / "langgraph-dev.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH", "LANGCHAIN"))},
        "PYTHONPATH": str(ROOT),  # graphs.py imports graphwire's graphs from this checkout
        "LANGSMITH_TRACING": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(langgraph), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
             "--port", str(port), "--config", str(config), "--n-jobs-per-worker", "4"],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log, timeout=90)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and workers
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


if __name__ == "__main__":  # .ci/run: create the venv before the tests (pytest's timeout)
    try:
        print(ensure_venv())
    except pytest.skip.Exception as skipped:
        print(f"oracle: {skipped.msg}; tests/agentapi/test_oracle.py will skip", file=sys.stderr)
