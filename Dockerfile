# MobileSD: the core service (HTTP API, phone page, inbox watcher) and the terminal UI
# (`docker exec -it mobilesd mobilesd tui`). Installed the way the README installs it: pip.
# Needs BuildKit (the default builder since Docker 23).
#
#   docker build -t mobilesd .
#   docker run -d --name mobilesd -p 8188:8188 -v ./config:/config -v ./outputs:/outputs \
#     -v ./inbox:/inbox mobilesd
#   docker exec mobilesd mobilesd link     # the phone's sign-in link (the log has it only once)
#
# BASE_IMAGE: any Debian-like image with Python 3.11+ and pip as `python` and `pip` (the tests
# use one made from Debian's packages by docker/debian-base.sh where no registry is reachable).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# The index pip downloads from, and its CA certificate as the secret `pip_cert` (a machine
# behind a TLS-inspecting proxy): for this stage only, never in the image.
ARG PIP_INDEX_URL=https://pypi.org/simple
# Wheels only: the final image gets no compiler, no pip cache and no source tree. The source is
# mounted, not copied (its build files are thrown away with the mount).
RUN --mount=type=bind,target=/src,rw \
    --mount=type=secret,id=pip_cert \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip wheel --disable-pip-version-check --wheel-dir /wheels /src

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="MobileSD" \
      org.opencontainers.image.description="Self-hosted job queue and remote control for Stable Diffusion Forge servers" \
      org.opencontainers.image.licenses="MIT"

# Unraid's convention: files belong to nobody:users (99:100), group-writable (UMASK 002), so
# the people who drop files over SMB can still edit and delete them.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8188 \
    CONFIG_DATA_PATH=/config \
    STABLE_DIFFUSION_SAVE_PATH=/outputs \
    INBOX_PATH=/inbox \
    LORA_PATH=/models/lora \
    CHECKPOINT_PATH=/models/checkpoints \
    PUID=99 \
    PGID=100 \
    UMASK=002 \
    MOBILESD_EXAMPLES=/app/examples/jobs \
    COLORTERM=truecolor

# One layer on top of the base: the wheels, the examples and the entrypoint are mounted from
# the build stage and the context, not copied in layers of their own.
RUN --mount=type=bind,from=build,source=/wheels,target=/tmp/wheels \
    --mount=type=bind,source=examples,target=/tmp/examples \
    --mount=type=bind,source=docker/entrypoint.sh,target=/tmp/entrypoint.sh \
    pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links=/tmp/wheels /tmp/wheels/mobilesd-*.whl \
    && install -m 0755 /tmp/entrypoint.sh /usr/local/bin/mobilesd-entrypoint \
    && mkdir -p /app /config /outputs /inbox /models/lora /models/checkpoints \
    && cp -r /tmp/examples /app/examples

VOLUME ["/config", "/outputs", "/inbox", "/models/lora", "/models/checkpoints"]
EXPOSE 8188

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8188') + '/healthz', timeout=4)"]

# SIGTERM stops the core cleanly within Docker's 10 s grace period: a job whose images are
# being saved gets up to 5 s to finish; other running jobs stay `processing` on disk and are
# queued again first at the next start (nothing is lost).
STOPSIGNAL SIGTERM
ENTRYPOINT ["mobilesd-entrypoint"]
CMD ["mobilesd", "serve", "--no-qr"]
