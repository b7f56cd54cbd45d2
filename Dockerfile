# CallCov auth sidecar. Build: docker build -t callcov-sidecar .
# Run:  docker run -p 8080:8080 --stop-timeout 40 -e CALLCOV_JWT_SECRET=... -e CALLCOV_KEY_HASH_SECRET=... \
#         -e CALLCOV_REDIS_URL=redis://redis:6379/0 -e CALLCOV_UPSTREAM_URL=http://api:8000 callcov-sidecar
# (--stop-timeout: longer than server.graceful_timeout_seconds, or docker stop kills the drain at 10 s)
# Checked end to end by scripts/container-smoke.
# The config is /etc/callcov-sidecar/sidecar.yaml (config/docker.yaml); mount your own there.

# --- build: a virtualenv with the project and its dependencies, all from wheels ---
# (every dependency ships manylinux wheels, so no compiler: on a platform where one
# does not, add `apt-get install build-essential` to this stage)
FROM python:3.11-slim AS build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY sidecar ./sidecar
RUN pip install -c requirements.lock .

# --- runtime: the virtualenv only, run as an unprivileged user ---
FROM python:3.11-slim
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --home-dir /var/lib/callcov-sidecar \
       --create-home --shell /usr/sbin/nologin sidecar
COPY --from=build /opt/venv /opt/venv
COPY config/docker.yaml /etc/callcov-sidecar/sidecar.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIDECAR_CONFIG=/etc/callcov-sidecar/sidecar.yaml
# With redis.url: embedded, the data lives in /var/lib/callcov-sidecar/redis: mount a volume.
WORKDIR /var/lib/callcov-sidecar
USER 10001:10001
# 8080: public API (server.port); 9090: admin /healthz /readyz /metrics (admin.port).
EXPOSE 8080 9090
# The slim image has no curl: probe the admin listener with the standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status == 200 else 1)"]
# SIGTERM (docker stop) drains in-flight requests for server.graceful_timeout_seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["callcov-sidecar"]
CMD ["serve"]
