"""Installed, graphwire claims one import name, ``graphwire``: a user's own ``graphs``,
``topics``, ``processors``, ``cli`` and ``settings`` packages keep working beside it, with the
editable install (``make install``) and with a wheel from ``pip wheel .`` in a fresh venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import ROOT

USER_PACKAGES = ("graphs", "topics", "processors", "cli", "settings")

# The user's graph imports the user's own packages of graphwire's folder names.
MINE = '''
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

import cli
import processors
import settings
import topics


class State(TypedDict):
    text: str


def shout(state: State) -> dict[str, str]:
    owners = {m.OWNER for m in (cli, processors, settings, topics)}
    return {"text": state["text"].upper() + topics.SUFFIX + "/" + ",".join(sorted(owners))}


g = StateGraph(State).add_node("shout", shout).add_edge(START, "shout").add_edge("shout", END)
'''

CLIENT = '''
import asyncio, json, os, sys

import graphs, topics  # the user's: importing graphwire must not replace them
from graphwire import GraphwireClient, RunError


async def main() -> None:
    async with GraphwireClient(os.environ["GRAPHWIRE_BOOTSTRAP_SERVERS"],
                               topic_prefix=os.environ["GRAPHWIRE_TOPIC_PREFIX"]) as client:
        result = await client.invoke("mine", {"text": "hi"}, wait_timeout=90)
    import graphwire
    print(json.dumps({"status": result.status, "output": result.output,
                      "user": [graphs.OWNER, topics.OWNER], "graphwire": graphwire.__file__,
                      "RunError": RunError.__module__}))

asyncio.run(main())
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LangGraph project whose own packages have graphwire's folder names."""
    root = tmp_path_factory.mktemp("userproject")
    for name in USER_PACKAGES:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f'OWNER = "user-{name}"\nSUFFIX = "!"\n')
    (root / "graphs" / "mine.py").write_text(MINE)
    (root / "client.py").write_text(CLIENT)
    return root


def _editable_bin() -> Path:
    return Path(sys.executable).parent


@pytest.fixture(scope="module")
def wheel_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with graphwire installed from a wheel built by ``pip wheel .``.

    Its dependencies are the ones this venv already has (a ``.pth`` line adds that
    site-packages), so the test needs no index; graphwire itself comes only from the wheel:
    this venv's editable finder is not loaded there (``.pth`` files of an added path are not
    run)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("graphwire-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert top == {"graphwire", wheel.name.split("-py")[0] + ".dist-info"}, top
    assert {"graphwire/__init__.py", "graphwire/topics/client.py",
            "graphwire/graphs/registry.py", "graphwire/processors/runner/runner.py",
            "graphwire/processors/audit/migrations/0001_audit_tables.sql",
            "graphwire/processors/gateway/ui/static/htmx.min.js",  # the run inspector's assets
            "graphwire/processors/gateway/ui/static/ui.js",
            "graphwire/processors/gateway/ui/templates/shell.html"} <= names
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
         "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "_graphwire_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         str(wheel)], capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    return venv / "bin"


@pytest.fixture(params=["editable", "wheel"])
def install(request: pytest.FixtureRequest) -> Path:
    """The bin directory of a graphwire install: this venv's editable one, or the wheel's."""
    if request.param == "editable":
        return _editable_bin()
    return Path(request.getfixturevalue("wheel_bin"))


def user_env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHWIRE_")}
    return {**env, "PYTHONPATH": str(project), "GRAPHWIRE_GRAPHS": "mine=graphs.mine:g", **extra}


def test_migrations_ship_in_the_package() -> None:
    """The audit migrations are package data: found through importlib, not the repository."""
    from graphwire.processors.audit.db import migrations

    assert [m.version for m in migrations()][:2] == [1, 2]


def test_user_packages_with_graphwires_folder_names_work(project: Path, install: Path) -> None:
    """``graphwire graphs --demo-graphs`` loads the user's ``graphs.mine`` and lists it with the
    demo graphs; the user's packages stay the user's after graphwire is imported."""
    listed = subprocess.run([str(install / "graphwire"), "graphs", "--demo-graphs"], cwd=project,
                            env=user_env(project), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert [r[0] for r in rows] == ["approval", "chat", "echo", "mine", "pipeline", "slow"]
    assert rows[3] == ["mine", "shout"]
    probe = subprocess.run(
        [str(install / "python"), "-c", textwrap.dedent("""
            import json, graphs, topics, processors, cli, settings
            import graphwire, graphwire.graphs.registry, graphwire.processors.cli.main
            from graphwire import Client, GraphwireClient, RunError
            print(json.dumps([m.OWNER for m in (graphs, topics, processors, cli, settings)]
                             + [graphwire.__file__]))
        """)], cwd=project, env=user_env(project), capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    *owners, graphwire_file = json.loads(probe.stdout)
    assert owners == [f"user-{n}" for n in USER_PACKAGES]
    expected_home = ROOT if install == _editable_bin() else install.parent
    assert Path(graphwire_file).is_relative_to(expected_home)


@pytest.mark.integration
def test_worker_and_client_run_the_users_graph(
    project: Path, install: Path, bootstrap: str, topics: TopicNames, tmp_path: Path
) -> None:
    """``graphwire worker --processes 2`` (children started from the user's directory) runs the
    user's graph (which imports the user's own ``topics``, ``settings``, ``processors`` and
    ``cli``), and ``from graphwire import GraphwireClient`` in the user's project gets its
    result."""
    env = user_env(project, GRAPHWIRE_BOOTSTRAP_SERVERS=bootstrap,
                   GRAPHWIRE_TOPIC_PREFIX=topics.prefix,
                   GRAPHWIRE_GROUP_ID=f"{topics.prefix}-runners",
                   GRAPHWIRE_DEDUP="false", GRAPHWIRE_CHECKPOINTS="false", GRAPHWIRE_HTTP_PORT="0",
                   GRAPHWIRE_SESSION_TIMEOUT_MS="3000", GRAPHWIRE_HEARTBEAT_INTERVAL_MS="1000")
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([str(install / "graphwire"), "worker", "--processes", "2"],
                              cwd=project, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        done = subprocess.run([str(install / "python"), "client.py"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=150)
    finally:
        worker.terminate()  # the supervisor stops its children
        worker.wait(timeout=60)
        log.close()
    assert done.returncode == 0, done.stderr + (tmp_path / "worker.log").read_text()[-3000:]
    found = json.loads(done.stdout)
    owners = "user-cli,user-processors,user-settings,user-topics"
    assert found["status"] == "success"
    assert found["output"] == {"text": f"HI!/{owners}"}
    assert found["user"] == ["user-graphs", "user-topics"]
    assert found["RunError"] == "graphwire.topics.errors"
