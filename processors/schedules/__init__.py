"""``graphwire scheduler``: delayed requests (``after_seconds``/``run_at``) and crons.

- ``intake``: every replica, its own consumer group on the requests topic, stores the requests
  that carry ``after_seconds``/``run_at`` in ``graphwire_schedules`` (runners skip them).
- ``leader``: one replica at a time (a PostgreSQL advisory lock; the others stand by) turns due
  cron firings into rows of the same table and produces due rows as plain requests.
- ``store``: the SQL of the schedules table.
"""

from graphwire.processors.schedules.scheduler import Scheduler

__all__ = ["Scheduler"]
