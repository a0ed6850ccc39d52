# AgentMem: the service. compose.yaml runs it against a three-node NATS cluster and Postgres
# (docs/deploy.md); run alone, set AGENTMEM_NATS to a NATS server with JetStream, and it keeps
# its projections in SQLite under /data unless AGENTMEM_STORE names a Postgres DSN.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN pip install . \
    && useradd --system --home-dir /data --shell /usr/sbin/nologin agentmem \
    && mkdir -p /data \
    && chown agentmem:agentmem /data

# A named volume mounted here starts with this directory's owner, so the service can write.
USER agentmem
WORKDIR /data
ENV AGENTMEM_DATA_DIR=/data
VOLUME ["/data"]

# Exec form: agentmem gets SIGTERM itself and stops cleanly.
CMD ["agentmem", "serve"]
