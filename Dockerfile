# The hubcull operator image: `hubcull run` on Python 3.12, as the non-root user 65532.
#
#   docker build -t hubcull:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/hubcull:TAG --push .
#
# Every input is pinned, so a rebuild of the same commit installs the same files:
# - The base image by digest: the digest of the multi-platform index of python:3.12-slim
#   (one digest for the linux/amd64 and linux/arm64 images). To move to a newer
#   python:3.12-slim, print the index digest with
#       docker buildx imagetools inspect python:3.12-slim
#   (the "Digest:" line at the top, not one of the per-platform "Manifests:") and replace the
#   sha256 below.
# - The Python packages by hash: requirements/image.txt pins the runtime dependencies of
#   pyproject.toml and the build backend with the hashes of all their files (scripts/lock
#   regenerates and checks it). pip installs them with --require-hashes and wheels only,
#   then the package itself with --no-deps (nothing resolved or downloaded at that point).
#
# The Helm chart (deploy/helm/hubcull) runs this image with a read-only root filesystem as
# user 65532, probes port 8080 (kopf's /healthz) and scrapes port 9090 (/metrics).
# tests/test_dockerfile.py keeps this file, the lock and the chart in step.
FROM python:3.12-slim@sha256:78387bc3881b8273120a12ebe6c1ab22b018ccc2c9adf565ae1ac9b536e184ea

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

# A system user with a fixed numeric id, so Kubernetes can verify runAsNonRoot.
RUN groupadd --system --gid 65532 hubcull \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin hubcull

WORKDIR /src
# The pinned dependencies first: this layer changes only with the lock.
COPY requirements/image.txt ./requirements/image.txt
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements/image.txt

# Then the package metadata (and the README and LICENSE it names), then the code.
COPY pyproject.toml README.md LICENSE ./
COPY operator/ ./operator/
# Build and install the package alone, with the setuptools installed above (no build
# isolation: nothing is downloaded), then drop setuptools, which nothing needs at run time.
# pip byte-compiles what it installs; the official image ships the standard library without
# .pyc files, so compile it too: the root filesystem is read-only at run time and every start
# would otherwise compile the ~60 stdlib modules the operator imports. The sources go.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip uninstall --yes setuptools \
    && python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
    && rm -rf /src

# No .pyc writes at run time (the root filesystem is read-only in the chart).
ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /
USER 65532:65532

# 8080: kopf's health endpoint (--liveness http://0.0.0.0:8080/healthz)
# 9090: Prometheus metrics (--metrics-port 9090)
EXPOSE 8080 9090

ENTRYPOINT ["hubcull", "run"]
