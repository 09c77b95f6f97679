"""Operator commands: graphwire doctor and graphwire topics scale."""

from __future__ import annotations

import subprocess

import asyncpg
import pytest
from pydantic import SecretStr

from graphwire.processors.audit.db import migrate, server_settings
from graphwire.processors.cli.doctor import settings_checks
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.helpers import graphwire as run_cli


def graphwire(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``graphwire ARGS`` with ``env``, up to two minutes (see :func:`tests.helpers.graphwire`)."""
    return run_cli(*args, env=env, timeout=120)


def rows(output: str) -> dict[str, str]:
    """``{check name: result}`` from doctor's table."""
    found = {}
    for line in output.splitlines()[1:]:
        name, result = line[:30].strip(), line[31:37].strip()
        if name:
            found[name] = result
    return found


@pytest.mark.integration
async def test_doctor_passes_a_healthy_dev_stack_and_fails_with_the_fix(
    topics: TopicNames, worker_env: dict[str, str]
) -> None:
    """`graphwire doctor` on an unmigrated audit schema exits 1 with "audit tables migrated" failed
    and the fix "graphwire db migrate"; after migrating it exits 0 with the 10 checks (Kafka,
    topics, replication, lag, Redis, PostgreSQL, audit tables, heartbeat, drain grace, security)
    passed, the requests topic at 4 partitions, and "0 fail" last."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    env = {**worker_env, "GRAPHWIRE_PARTITIONS": "4", "GRAPHWIRE_AUDIT_SCHEMA": prefix}
    unmigrated = graphwire(env, "doctor")
    assert unmigrated.returncode == 1, unmigrated.stdout + unmigrated.stderr
    table = rows(unmigrated.stdout)
    assert table["audit tables migrated"] == "fail"
    assert "fix     graphwire db migrate" in unmigrated.stdout
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings=server_settings(prefix))
    try:
        await migrate(conn, prefix)
    finally:
        await conn.close()
    healthy = graphwire(env, "doctor")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    table = rows(healthy.stdout)
    for name in ("Kafka reachable", "topics exist", "topic replication", "runner group lag",
                 "Redis reachable", "PostgreSQL reachable", "audit tables migrated",
                 "heartbeat vs session timeout", "drain grace periods", "security"):
        assert table[name] == "pass", (name, healthy.stdout)
    assert f"{topics.requests}=4" in healthy.stdout
    assert healthy.stdout.rstrip().endswith("0 fail")


def test_doctor_settings_checks_outside_dev() -> None:
    """For remote servers without TLS or credentials and a heartbeat half the session timeout, the
    settings checks fail Kafka TLS/SASL (fix GRAPHWIRE_SECURITY_PROTOCOL=SASL_SSL) and the
    heartbeat, and warn on Redis TLS (fix "use a rediss:// URL"), PostgreSQL TLS and credentials
    and topic replication; with SASL_SSL, a 3 s heartbeat, rediss, sslmode=require with a password
    and replication 3 every check passes."""
    remote = Settings(
        _env_file=None,  # type: ignore[call-arg]
        bootstrap_servers="kafka-1.prod:9092,kafka-2.prod:9092",
        redis_url=SecretStr("redis://cache.prod:6379/0"),
        database_url=SecretStr("postgresql://app@db.prod:5432/graphwire"),
        heartbeat_interval_ms=5000,
        session_timeout_ms=10000,
    )
    found = {c.name: c for c in settings_checks(remote)}
    assert found["Kafka TLS/SASL"].status == "fail"
    assert "GRAPHWIRE_SECURITY_PROTOCOL=SASL_SSL" in found["Kafka TLS/SASL"].fix
    assert found["heartbeat vs session timeout"].status == "fail"
    assert (found["Redis TLS"].status, found["Redis TLS"].fix) == ("warn", "use a rediss:// URL")
    assert found["PostgreSQL TLS"].status == "warn"
    assert found["PostgreSQL credentials"].status == "warn"
    assert found["topic replication (setting)"].status == "warn"
    secured = remote.model_copy(update={
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "u", "sasl_password": SecretStr("p"), "heartbeat_interval_ms": 3000,
        "redis_url": SecretStr("rediss://cache.prod:6379/0"),
        "database_url": SecretStr("postgresql://app:pw@db.prod:5432/g?sslmode=require"),
        "replication_factor": 3,
    })
    assert {c.status for c in settings_checks(secured)} == {"pass"}


def test_doctor_flags_clear_text_kafka_and_demo_graphs_in_a_production_config() -> None:
    """Brokers that are not all loopback make a production config: there PLAINTEXT and
    SASL_PLAINTEXT fail (anyone on the path reads every tenant's data, and the password), SSL
    without SASL warns (no client identity for per-service ACLs), demo graphs warn; 127.0.0.2
    is loopback, so a dev config passes with demo graphs on."""
    def kafka_and_demo(**fields: object) -> list[tuple[str, str, str]]:
        checks = settings_checks(Settings(_env_file=None, **fields))  # type: ignore[call-arg]
        return [(c.name, c.status, c.fix) for c in checks
                if c.name in ("security", "Kafka TLS/SASL", "demo graphs")]

    remote = {"bootstrap_servers": "10.0.0.5:9092"}
    sasl = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": "p"}
    to_sasl_ssl = ("set GRAPHWIRE_SECURITY_PROTOCOL=SASL_SSL with a SASL user per processor and "
                   "ACLs (deploy/kafka/acls.sh, docs/security.md)")
    off = ("unset GRAPHWIRE_DEMO_GRAPHS (and drop --demo-graphs): any caller may run them, and "
           "`slow` sleeps as long as asked")
    assert kafka_and_demo(**remote, demo_graphs=True) == [
        ("Kafka TLS/SASL", "fail", to_sasl_ssl), ("demo graphs", "warn", off)]
    assert kafka_and_demo(**remote, security_protocol="SASL_PLAINTEXT", **sasl) == [
        ("Kafka TLS/SASL", "fail", to_sasl_ssl), ("demo graphs", "pass", "")]
    assert kafka_and_demo(**remote, security_protocol="SSL") == [
        ("Kafka TLS/SASL", "warn", to_sasl_ssl), ("demo graphs", "pass", "")]
    assert kafka_and_demo(**remote, security_protocol="SASL_SSL", **sasl) == [
        ("Kafka TLS/SASL", "pass", ""), ("demo graphs", "pass", "")]
    assert kafka_and_demo(bootstrap_servers="127.0.0.2:9092,[::1]:9093", demo_graphs=True) == [
        ("security", "pass", ""), ("demo graphs", "pass", "")]


@pytest.mark.integration
def test_topics_scale_refuses_to_decrease_and_names_an_unsupported_broker(
    topics: TopicNames, worker_env: dict[str, str]
) -> None:
    """`topics scale --partitions 2` on 4-partition topics exits 1 because Kafka cannot decrease
    partitions; `--partitions 4` exits 0 with "already has 4 partitions: nothing to do";
    `--partitions 8` exits 1 saying the broker may not support CreatePartitions (the test broker
    does not)."""
    smaller = graphwire(worker_env, "topics", "scale", "--partitions", "2")
    assert smaller.returncode == 1
    assert (f"{topics.requests} has 4 partitions; Kafka cannot decrease a topic's partitions"
            in smaller.stderr)
    same = graphwire(worker_env, "topics", "scale", "--partitions", "4")
    assert (same.returncode, same.stdout.strip()) == (
        0, f"{topics.requests} already has 4 partitions: nothing to do"
    )
    # Tansu (the test broker) has no CreatePartitions; Apache Kafka does
    larger = graphwire(worker_env, "topics", "scale", "--partitions", "8")
    assert larger.returncode == 1
    assert "it may not support CreatePartitions (the bundled test broker does not)" in larger.stderr


def test_sasl_and_tls_settings_reach_every_kind_of_client() -> None:
    """Runner, CLI and gateway share kafka_security() (aiokafka); the sink gets faust's form."""
    import ssl

    import faust

    from graphwire.processors.audit.sink import _credentials

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        bootstrap_servers="kafka.prod:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="graphwire",
        sasl_password=SecretStr("pw"),
    )
    options = settings.kafka_security()
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "graphwire", "sasl_plain_password": "pw",
    }
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = _credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "graphwire", "pw", "SCRAM-SHA-512"
    )
    assert credentials.ssl_context is not None
    with pytest.raises(ValueError, match="security_protocol=SASL_PLAINTEXT needs"):
        Settings(_env_file=None, security_protocol="SASL_PLAINTEXT")  # type: ignore[call-arg]


async def test_doctor_warns_when_postgresql_runs_without_autovacuum() -> None:
    """The autovacuum check reads the server's own setting: "pass" when on; when off, a warning
    that counts the dead rows of the checkpoint tables in the worker's schema (here 3 deleted
    rows of a fresh schema's checkpoints, once the server's statistics have them) and the fix."""
    import asyncio
    import uuid

    from graphwire.processors.cli.doctor import _autovacuum_check

    schema = f"gw_vacuum_{uuid.uuid4().hex[:8]}"
    settings = Settings(checkpoint_schema=schema)
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'CREATE TABLE "{schema}".checkpoints (id int)')
        await conn.execute(f'INSERT INTO "{schema}".checkpoints SELECT generate_series(1, 3)')
        await conn.execute(f'DELETE FROM "{schema}".checkpoints')
        on = await conn.fetchval("SHOW autovacuum") == "on"
        check = await _autovacuum_check(conn, settings)
        if on:
            assert (check.name, check.status, check.detail) == (
                "PostgreSQL autovacuum", "pass", "on")
            return
        for _ in range(50):  # a backend reports its table statistics within about a second
            if check.detail.startswith("off: 3 "):
                break
            await asyncio.sleep(0.1)
            check = await _autovacuum_check(conn, settings)
        assert (check.name, check.status) == ("PostgreSQL autovacuum", "warn")
        assert check.detail == "off: 3 dead rows in the checkpoint tables, and more with every run"
        assert check.fix.startswith("ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf();")
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
