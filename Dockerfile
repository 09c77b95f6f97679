# One image for every graphwire processor; the command chooses (worker, topics ensure, ...).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY topics ./topics
COPY graphs ./graphs
COPY processors ./processors
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /wheels \
 && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/graphwire-*.whl

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 graphwire
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER graphwire
WORKDIR /home/graphwire
ENV PYTHONUNBUFFERED=1 GRAPHWIRE_LOG_FORMAT=json
# The health endpoint arrives with the operations work; until then, the process being alive is it.
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import os; os.kill(1, 0)"
ENTRYPOINT ["graphwire"]
CMD ["worker"]
