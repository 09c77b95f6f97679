# syntax=docker/dockerfile:1
# One image for every graphwire processor; the command chooses:
#   worker (default) | audit | gateway | topics ensure | db migrate | db prune | ...
# Build: docker build -t graphwire .    Run: docker run graphwire gateway

# --- build: the graphwire wheel and wheels of its runtime dependencies (no dev extra) ---
FROM python:3.11-slim AS build
# a compiler only here, for any dependency without a wheel for this platform
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
# graphwire/ is the import root: the public API and links to the three folders below
COPY graphwire ./graphwire
COPY topics ./topics
COPY graphs ./graphs
COPY processors ./processors
RUN pip install --no-cache-dir --upgrade pip build \
 && python -m build --wheel --outdir /dist \
 && pip wheel --no-cache-dir --wheel-dir /wheels /dist/graphwire-*.whl

# --- runtime: the wheels installed offline, nothing else ---
FROM python:3.11-slim AS runtime
RUN groupadd --gid 10001 graphwire \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin graphwire
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels graphwire
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRAPHWIRE_LOG_FORMAT=json
WORKDIR /home/graphwire
# numeric, so Kubernetes' runAsNonRoot can verify it
USER 10001:10001
# worker /metrics, audit sink /metrics, gateway API and /metrics
EXPOSE 8080 8081 8000
# The worker's /health (slim has no curl). The audit sink (8081) and the gateway (8000) answer on
# their own ports: docker-compose.yml gives those services their own healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)" \
      "http://127.0.0.1:${GRAPHWIRE_HTTP_PORT:-8080}/health" || exit 1
ENTRYPOINT ["graphwire"]
CMD ["worker"]
