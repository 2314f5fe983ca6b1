# The hubcull operator image: `hubcull run` on Python 3.12, as the non-root user 65532.
#
#   docker build -t hubcull:0.1.0 .
#
# Only the runtime dependencies from pyproject.toml's [project.dependencies] are installed
# (no test or bench extras). The Helm chart (deploy/helm/hubcull) runs this image with a
# read-only root filesystem as user 65532, and probes port 8080 (kopf's /healthz) and scrapes
# port 9090 (/metrics). tests/test_dockerfile.py keeps this file and the chart in step.
FROM python:3.12-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

# A system user with a fixed numeric id, so Kubernetes can verify runAsNonRoot.
RUN groupadd --system --gid 65532 hubcull \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin hubcull

WORKDIR /src
# The package metadata (and the README it names) first, then the code.
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
# Install the package and its runtime dependencies; pip byte-compiles them now because the
# root filesystem is read-only at run time. The sources are not needed afterwards.
RUN pip install --no-cache-dir . \
    && rm -rf /src

# No .pyc writes at run time (the root filesystem is read-only in the chart).
ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /
USER 65532:65532

# 8080: kopf's health endpoint (--liveness http://0.0.0.0:8080/healthz)
# 9090: Prometheus metrics (--metrics-port 9090)
EXPOSE 8080 9090

ENTRYPOINT ["hubcull", "run"]
