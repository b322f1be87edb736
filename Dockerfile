# MobileSD: the core service (HTTP API, phone page, inbox watcher) and the terminal UI
# (`docker exec -it mobilesd mobilesd tui`). Installed the way the README installs it: pip.
#
#   docker build -t mobilesd .
#   docker run -d --name mobilesd -p 8188:8188 -v ./config:/config -v ./outputs:/outputs \
#     -v ./inbox:/inbox mobilesd
#   docker exec mobilesd mobilesd link     # the phone's sign-in link (the log has it only once)

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mobilesd_core ./mobilesd_core
COPY mobilesd_tui ./mobilesd_tui
# Wheels only: the final image gets no compiler, no pip cache and no source tree.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
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

COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links=/tmp/wheels /tmp/wheels/mobilesd-*.whl \
    && rm -rf /tmp/wheels \
    && mkdir -p /config /outputs /inbox /models/lora /models/checkpoints

COPY examples /app/examples
COPY docker/entrypoint.sh /usr/local/bin/mobilesd-entrypoint

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
