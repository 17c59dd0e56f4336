# One image for every Python service of the stack (docker-compose.yml):
#   club-proxy run ...                    the proxy, with new_services in-process (the default)
#   python -m examples.club_api ...       the reference club-api (the legacy side)
#   python -m deploy.init_db              the one-shot schema + demo seed
# Build: docker build -t club-proxy .   (docker-compose builds it by itself)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The runtime dependencies of pyproject.toml, every version pinned by
# requirements.lock (the lock also pins the test and lint extras, which the
# image does not need). A layer of its own: it is rebuilt only when the
# dependencies or the lock change, not on every source edit.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/runtime.txt \
    && pip install -c requirements.lock -r /tmp/runtime.txt \
    && rm /tmp/runtime.txt

# The code: proxy, legacy_compat, new_services, the reference club-api and its
# config, and deploy/ (healthcheck, init_db). Installed without dependencies,
# so nothing beyond the lock's pins gets in.
COPY . .
RUN pip install --no-deps . \
    && pip check \
    && useradd --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin club \
    && rm -rf build *.egg-info

USER club

# The proxy's defaults; docker-compose.yml passes the rest (routes, token, DSN).
ENV CLUB_PROXY_ADMIN_PORT=9901
EXPOSE 8000 9901

# The admin API's /-/health (with the bearer token from CLUB_PROXY_ADMIN_TOKEN
# when set). Services running another command override or disable it.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-m", "deploy.healthcheck"]

# club-proxy is PID 1 and handles SIGTERM itself: /-/ready turns 503, the
# listener closes, requests in flight get --drain-timeout seconds, then it exits.
# Keep --drain-timeout below the orchestrator's stop timeout (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT []
CMD ["club-proxy", "run", "--routes", "/app/deploy/routes/routes.yaml", \
     "--host", "0.0.0.0", "--port", "8000", \
     "--admin-host", "0.0.0.0", "--admin-port", "9901", "--drain-timeout", "10"]
