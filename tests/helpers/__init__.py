"""What tests share: waiting for a condition, running the CLI, runners, the database, ops endpoints.

- :func:`eventually` polls a check until it holds, or fails naming what never happened;
- :func:`graphwire` runs the command line as a child process;
- :func:`runner_for` and the ``start_runner`` fixture make in-process runners;
- :func:`connect` and the ``db`` fixture open the test database.

The Kafka helpers (``Collector``, ``produce``, ``WorkerProcess``) stay in ``tests.kafka_helpers``.
"""

from tests.helpers.cli import ROOT, graphwire, graphwire_async
from tests.helpers.database import connect, db, wait_rows
from tests.helpers.ops import metrics, ready, samples, wait_metric, wait_ready
from tests.helpers.runners import runner_for, start_runner
from tests.helpers.waiting import eventually, until

__all__ = [
    "ROOT",
    "connect",
    "db",
    "eventually",
    "graphwire",
    "graphwire_async",
    "metrics",
    "ready",
    "runner_for",
    "samples",
    "start_runner",
    "until",
    "wait_metric",
    "wait_ready",
    "wait_rows",
]
