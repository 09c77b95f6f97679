"""``graphwire doctor``: the production checklist, checked against the real deployment.

Each check is pass, warn or fail, with the fix when it is not pass. The exit code is 1 when any
check fails. "Local" means every broker is on a loopback address (localhost, 127.0.0.0/8, ::1):
a development setup, where replication and TLS are not expected. Anything else is a production
config: whoever can write to its topics acts for every tenant (docs/security.md), so Kafka must
be SASL_SSL and the demo graphs off.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from graphwire.processors.settings import Settings

_LOCAL = {"localhost", "127.0.0.1", "::1", ""}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # pass | warn | fail
    detail: str
    fix: str = ""


def _loopback(host: str) -> bool:
    if host in _LOCAL:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local(settings: Settings) -> bool:
    hosts = [h.strip().rsplit(":", 1)[0].strip("[]") for h in settings.bootstrap_servers.split(",")]
    return all(_loopback(h) for h in hosts)


_TO_SASL_SSL = ("set GRAPHWIRE_SECURITY_PROTOCOL=SASL_SSL with a SASL user per processor and ACLs "
                "(deploy/kafka/acls.sh, docs/security.md)")


def kafka_security_check(settings: Settings) -> Check:
    """Of a production config: SASL_SSL passes; SSL alone has no client identity to give each
    processor its own ACLs; PLAINTEXT and SASL_PLAINTEXT send every tenant's data in clear."""
    protocol = settings.security_protocol
    if protocol == "SASL_SSL":
        return Check("Kafka TLS/SASL", "pass", protocol)
    if protocol == "SSL":
        return Check("Kafka TLS/SASL", "warn",
                     "SSL without SASL: the brokers cannot tell one processor from another, so "
                     "ACLs cannot keep a producer out of the requests and control topics",
                     _TO_SASL_SSL)
    return Check("Kafka TLS/SASL", "fail",
                 f"{protocol} to remote brokers: anyone on the path reads every tenant's "
                 "requests and results" + (" and the SASL password" if "SASL" in protocol else ""),
                 _TO_SASL_SSL)


def demo_graphs_check(settings: Settings, local: bool) -> Check:
    """The demo graphs are for development: any caller may run them."""
    if settings.demo_graphs and not local:
        return Check("demo graphs", "warn", "the demo graphs (echo, chat, slow, ...) are served",
                     "unset GRAPHWIRE_DEMO_GRAPHS (and drop --demo-graphs): any caller may run "
                     "them, and `slow` sleeps as long as asked")
    return Check("demo graphs", "pass", "on (development)" if settings.demo_graphs else "off")


def settings_checks(settings: Settings) -> list[Check]:
    """Checks that need no connection: timeouts that fit together, security outside dev."""
    checks = []
    local = _local(settings)
    if settings.heartbeat_interval_ms * 3 > settings.session_timeout_ms:
        checks.append(Check("heartbeat vs session timeout", "fail",
                            f"heartbeat {settings.heartbeat_interval_ms} ms is over a third of "
                            f"the session timeout {settings.session_timeout_ms} ms",
                            "set GRAPHWIRE_HEARTBEAT_INTERVAL_MS <= session timeout / 3"))
    else:
        checks.append(Check("heartbeat vs session timeout", "pass",
                            f"{settings.heartbeat_interval_ms} / {settings.session_timeout_ms} ms"))
    if settings.revoke_grace_s > settings.shutdown_grace_s:
        checks.append(Check("drain grace periods", "warn",
                            f"revoke grace {settings.revoke_grace_s:g} s is longer than shutdown "
                            f"grace {settings.shutdown_grace_s:g} s",
                            "keep GRAPHWIRE_REVOKE_GRACE_S <= GRAPHWIRE_SHUTDOWN_GRACE_S"))
    elif settings.revoke_grace_s * 1000 >= settings.max_poll_interval_ms:
        checks.append(Check("drain grace periods", "fail",
                            "revoke grace is not below max.poll.interval.ms: a rebalance would "
                            "evict this worker while it drains",
                            "lower GRAPHWIRE_REVOKE_GRACE_S or raise "
                            "GRAPHWIRE_MAX_POLL_INTERVAL_MS"))
    else:
        checks.append(Check("drain grace periods", "pass",
                            f"shutdown {settings.shutdown_grace_s:g} s (give the orchestrator more "
                            f"than that), revoke {settings.revoke_grace_s:g} s"))
    if settings.lease_ms < 3 * settings.heartbeat_interval_ms:
        checks.append(Check("dedup lease", "warn", f"lease {settings.lease_ms} ms is short",
                            "GRAPHWIRE_LEASE_MS of 30000 suits most graphs"))
    if local:
        checks.append(Check("security", "pass", "local brokers: PLAINTEXT is fine for dev"))
        checks.append(demo_graphs_check(settings, local))
        return checks
    checks.append(kafka_security_check(settings))
    checks.append(demo_graphs_check(settings, local))
    redis = urlparse(settings.redis_url.get_secret_value())
    if settings.dedup and redis.scheme != "rediss" and redis.hostname not in _LOCAL:
        checks.append(Check("Redis TLS", "warn", f"{redis.scheme}:// to {redis.hostname}",
                            "use a rediss:// URL"))
    database = urlparse(settings.database_url.get_secret_value())
    if database.hostname not in _LOCAL and "sslmode=" not in (database.query or ""):
        checks.append(Check("PostgreSQL TLS", "warn", f"no sslmode for {database.hostname}",
                            "add ?sslmode=require (or verify-full) to GRAPHWIRE_DATABASE_URL"))
    if not database.password:
        checks.append(Check("PostgreSQL credentials", "warn", "no password in the URL",
                            "use a role with a password (or a secret file, "
                            "GRAPHWIRE_SECRETS_DIR)"))
    if settings.replication_factor < 3:
        checks.append(Check("topic replication (setting)", "warn",
                            f"GRAPHWIRE_REPLICATION_FACTOR={settings.replication_factor}",
                            "use 3 outside development"))
    return checks


async def kafka_checks(settings: Settings) -> list[Check]:
    from aiokafka.admin import AIOKafkaAdminClient

    from graphwire.topics.admin import partition_counts

    checks = []
    security = settings.kafka_security()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                request_timeout_ms=10_000, **security)
    try:
        await asyncio.wait_for(admin.start(), 15)
    except Exception as exc:
        return [Check("Kafka reachable", "fail", f"{settings.bootstrap_servers}: {exc}",
                      "check GRAPHWIRE_BOOTSTRAP_SERVERS and the security settings")]
    try:
        try:
            cluster = await admin.describe_cluster()
        except Exception as exc:
            return [Check("Kafka reachable", "fail", f"describe cluster failed: {exc}",
                          "check the brokers and the client's permissions (DescribeCluster)")]
        detail = (f"{len(cluster['brokers'])} broker(s), cluster {cluster.get('cluster_id')}, "
                  f"controller {cluster.get('controller_id')}")
        checks.append(Check("Kafka reachable", "pass", detail))
        names = [s.name for s in settings.topics.specs(settings.partitions)]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    counts = await partition_counts(settings.bootstrap_servers, names, **security)
    replicas = {t["topic"]: min((len(p["replicas"]) for p in t["partitions"]), default=0)
                for t in described if t["error_code"] == 0}
    missing = [n for n in names if n not in counts]
    if missing:
        checks.append(Check("topics exist", "fail", f"missing: {', '.join(missing)}",
                            "graphwire topics ensure --partitions N --replication-factor 3"))
    else:
        checks.append(Check("topics exist", "pass", ", ".join(f"{n}={counts[n]}" for n in names)))
    requests = counts.get(settings.topics.requests)
    if requests is not None and requests < settings.partitions:
        checks.append(Check("requests partitions", "warn",
                            f"{requests}, settings expect {settings.partitions}",
                            f"graphwire topics scale --partitions {settings.partitions}"))
    low = {n: r for n, r in replicas.items() if r < 3}
    if low and not _local(settings):
        checks.append(Check("topic replication", "fail",
                            ", ".join(f"{n}={r}" for n, r in low.items()),
                            "recreate (or reassign) the topics with replication factor 3"))
    elif replicas:
        note = " (local: fine for dev)" if low else ""
        checks.append(Check("topic replication", "pass",
                            f"min {min(replicas.values())}{note}"))
    checks.append(await _lag_check(settings, requests or 0))
    return checks


async def _lag_check(settings: Settings, partitions: int) -> Check:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = settings.topics.requests
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                group_id=settings.group_id, enable_auto_commit=False,
                                **settings.kafka_security())
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            lag += max(0, ends.get(tp, 0) - (committed or 0))
    except Exception as exc:
        return Check("runner group lag", "warn", f"could not read it: {exc}")
    finally:
        await consumer.stop()
    status = "pass" if lag < 1000 else "warn"
    fix = "" if status == "pass" else "add runners (up to the partition count) or partitions"
    return Check("runner group lag", status, f"{lag} requests behind ({settings.group_id})", fix)


async def store_checks(settings: Settings) -> list[Check]:
    from graphwire.processors.audit.db import connect, migrations, schema_exists, schema_version
    from graphwire.processors.dev.stack import redis_answers

    checks = []
    if settings.dedup:
        ok = await redis_answers(settings.redis_url.get_secret_value(), timeout=3)
        checks.append(Check("Redis reachable", "pass" if ok else "fail",
                            "dedup, cache and status" if ok else "no answer",
                            "" if ok else "check GRAPHWIRE_REDIS_URL (or GRAPHWIRE_DEDUP=false)"))
    try:
        # The database's own search_path: each check names its schema itself, and an unset
        # checkpoint schema means the tables are where the runner's default search_path puts them.
        conn = await connect(settings.database_url.get_secret_value(), timeout=5)
    except Exception as exc:
        status = "fail" if settings.checkpoints else "warn"
        return [*checks, Check("PostgreSQL reachable", status, str(exc),
                               "check GRAPHWIRE_DATABASE_URL")]
    try:
        checks.append(Check("PostgreSQL reachable", "pass",
                            str(await conn.fetchval("SHOW server_version"))))
        checks.append(await _autovacuum_check(conn, settings))
        audit_schema = settings.audit_schema
        have, want = await schema_version(conn, audit_schema), migrations()[-1].version
        if audit_schema and not await schema_exists(conn, audit_schema):
            checks.append(Check("audit tables migrated", "fail",
                                f"the schema {audit_schema!r} (GRAPHWIRE_AUDIT_SCHEMA) does not "
                                "exist", "graphwire db migrate (creates it)"))
        else:
            checks.append(Check("audit tables migrated", "pass" if have >= want else "fail",
                                f"version {have} of {want}",
                                "" if have >= want else "graphwire db migrate"))
            if have >= 6:
                checks.append(await _scheduler_check(conn, settings))
        if settings.checkpoints:
            schema = settings.checkpoint_schema
            name = f'"{schema}".checkpoints' if schema else "checkpoints"
            found = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
            checks.append(Check("checkpoint tables", "pass" if found else "warn",
                                "present" if found else "not created yet",
                                "" if found else "start a worker once (it creates them)"))
    finally:
        await conn.close()
    return checks


CHECKPOINT_TABLES = ("checkpoints", "checkpoint_writes", "checkpoint_blobs")


async def _autovacuum_check(conn: Any, settings: Settings) -> Check:
    """Runs delete and rewrite rows all the time (the checkpoints of stateless runs and of
    deleted threads, run records): without autovacuum their dead rows stay, the tables and
    indexes outgrow the shared buffers and every checkpoint write reads more pages."""
    if await conn.fetchval("SHOW autovacuum") == "on":
        return Check("PostgreSQL autovacuum", "pass", "on")
    dead = await conn.fetchval(
        "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables "
        "WHERE relname = ANY($1::text[]) AND ($2::text IS NULL OR schemaname = $2)",
        list(CHECKPOINT_TABLES), settings.checkpoint_schema or None)
    return Check("PostgreSQL autovacuum", "warn",
                 f"off: {dead} dead rows in the checkpoint tables, and more with every run",
                 "ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf(); "
                 "(or VACUUM the checkpoint and agent_runs tables on a schedule)")


def webhook_checks(settings: Settings) -> list[Check]:
    """``graphwire webhooks``: a secret that can sign, an allow-list that is not too wide, how
    long a dead receiver is retried."""
    from graphwire.processors.webhooks.policy import WebhookPolicy

    policy = WebhookPolicy(settings.webhook_allowed_hosts)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not policy.enabled:
        return [Check("webhooks", "pass", "off: GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS is empty, so "
                                          "requests with a webhook are rejected")]
    checks = []
    if not secret:
        checks.append(Check("webhook secret", "fail", "GRAPHWIRE_WEBHOOK_SECRET is not set: "
                            "graphwire webhooks does not start", "set it to `openssl rand -hex "
                            "32`; receivers get their caller's key, never this"))
    elif len(secret) < 32:
        checks.append(Check("webhook secret", "warn", f"{len(secret)} characters",
                            "use at least 32 random characters (openssl rand -hex 32)"))
    else:
        checks.append(Check("webhook secret", "pass", f"{len(secret)} characters"))
    wide = [f"*{s}" for s in policy.suffixes if s.count(".") < 2]  # "*.com", "*.io"
    named = sorted(policy.exact)
    if wide:
        checks.append(Check("webhook allow-list", "warn", f"{', '.join(wide)} allows a whole "
                            "top-level domain", "list the receivers' own domains"))
    else:
        checks.append(Check("webhook allow-list", "pass",
                            ", ".join([*named, *(f"*{s}" for s in policy.suffixes)]) +
                            " (private networks: GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS)"))
    s = settings
    waits = sum(min(s.webhook_backoff_max_s, s.webhook_backoff_s * 2.0 ** n)
                for n in range(s.webhook_max_attempts - 1))
    bound = waits + s.webhook_max_attempts * s.webhook_timeout_s
    checks.append(Check("webhook retries", "pass" if bound <= 3600 else "warn",
                        f"{s.webhook_max_attempts} attempts: a dead receiver's result is "
                        f"dead-lettered within about {bound:.0f} s",
                        "" if bound <= 3600 else "lower GRAPHWIRE_WEBHOOK_MAX_ATTEMPTS or "
                        "GRAPHWIRE_WEBHOOK_BACKOFF_MAX_S: results wait uncommitted meanwhile"))
    return checks
async def _scheduler_check(conn: Any, settings: Settings) -> Check:
    """Delayed requests or crons overdue by more than the missed grace: no scheduler leads."""
    from graphwire.processors.audit.db import search_path

    prefix = f"{search_path(settings.audit_schema)}." if settings.audit_schema else ""
    late = f"now() - make_interval(secs => {float(settings.scheduler_missed_grace_s)})"
    overdue = await conn.fetchval(
        f"SELECT (SELECT count(*) FROM {prefix}graphwire_schedules WHERE fired_at IS NULL "
        f"AND due_at < {late}) + (SELECT count(*) FROM {prefix}graphwire_crons "
        f"WHERE NOT paused AND next_at < {late})"
    )
    if overdue:
        return Check("scheduler", "warn", f"{overdue} delayed requests or crons overdue",
                     "run `graphwire scheduler` (its leader produces what is due)")
    return Check("scheduler", "pass", "nothing overdue")


async def run_doctor(settings: Settings) -> list[Check]:
    kafka, stores = await asyncio.gather(kafka_checks(settings), store_checks(settings))
    return [*kafka, *stores, *settings_checks(settings), *webhook_checks(settings)]


def render(checks: list[Check], colour: bool = False) -> str:
    paint = {"pass": "32", "warn": "33", "fail": "31"}
    lines = [f"{'CHECK':<30} {'RESULT':<6}  DETAIL"]
    for c in checks:
        status = f"\033[{paint[c.status]}m{c.status:<6}\033[0m" if colour else f"{c.status:<6}"
        lines.append(f"{c.name:<30} {status}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<30} {'fix':<6}  {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "warn", "fail")}
    lines.append(f"\n{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail")
    return "\n".join(lines)


def doctor_command(args: Any) -> int:
    import sys

    from graphwire.processors.cli.common import settings_from

    settings = settings_from(args)
    checks = asyncio.run(run_doctor(settings))
    print(render(checks, colour=sys.stdout.isatty()))
    return 1 if any(c.status == "fail" for c in checks) else 0
