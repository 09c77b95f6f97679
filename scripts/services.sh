#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer; start them if not.
set -u
pg_ok() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
redis_ok() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG || (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

if ! pg_ok; then
  if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi
if ! redis_ok; then
  if command -v redis-server >/dev/null; then
    echo "services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
fi
for i in $(seq 1 20); do pg_ok && redis_ok && break; sleep 0.5; done
pg_ok && echo "services: PostgreSQL answers on 127.0.0.1:5432" || echo "services: PostgreSQL is not available (not needed by the core runner tests)"
redis_ok && echo "services: Redis answers on 127.0.0.1:6379" || echo "services: Redis is not available (not needed by the core runner tests)"
exit 0
