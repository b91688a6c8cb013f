# detector: real-time anomaly detection for Redis Streams.
#
#   docker build -t detector .
#   mkdir -p -m 0700 secrets && (umask 022 && set -C && openssl rand -hex 32 > secrets/checkpoint.key)
#   docker run --rm -e DETECTOR_REDIS_URL=redis://host:6379/0 \
#       -e DETECTOR_CHECKPOINT_KEY_FILE=/run/secrets/checkpoint_key \
#       -v "$PWD/secrets/checkpoint.key:/run/secrets/checkpoint_key:ro" -p 9100:9100 detector
#
# The checkpoint key signs the worker's state in Redis: create it once (`set -C` refuses to
# overwrite it) and give every worker of a group the same one. The image holds none. The file
# is mounted with its host owner and mode, so it must be readable by the container's uid 10001
# (0644), inside a directory only you can enter (0700). DETECTOR_CHECKPOINT_KEY=<key> works too,
# but shows in `docker inspect`.
#
# Configured through DETECTOR_* environment variables only (see `detector run --help`).
#
# Two stages: the builder compiles the core (Cython, setup.py) into a wheel; the image installs
# that wheel and every dependency's binary wheel (amd64 and arm64), so it holds no compiler.

FROM python:3.11-slim AS builder
# The C compiler and the C library's headers (Python's come with the image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY detector ./detector
COPY models ./models
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DETECTOR_METRICS_PORT=9100

# A fixed non-root uid, so volume permissions and policies can name it. Its home is writable:
# without a key from the environment, `detector` keeps a generated one in
# ~/.config/detector/, and `detector train` writes baselines to ~/.local/share/detector/
# (mount a volume at /home/detector to keep them).
RUN groupadd --system --gid 10001 detector \
    && useradd --system --uid 10001 --gid detector --create-home \
        --home-dir /home/detector --shell /usr/sbin/nologin detector
# Named here too: Docker derives HOME from /etc/passwd only for the USER listed there.
ENV HOME=/home/detector

# The builder's wheel (with the `detector.models` specs) lands in site-packages, and no source
# tree stays behind to shadow the installed package.
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels

WORKDIR /app
# Fail the build if the model specs did not make it into the wheel, or if the core would run
# as pure Python (the slower fallback for machines without a compiler).
RUN detector models \
    && python -c "from detector.compiled import require_compiled; require_compiled()"
# The demo producer (compose profile `demo`) runs from this image too.
COPY deploy ./deploy

# Numeric, so runtimes can verify it is not root (Kubernetes runAsNonRoot).
USER 10001:10001

EXPOSE 9100

# A live worker refreshes its health key every second; `check` reads this container's own
# (exit 0 or 1), named as `detector run` names its consumer: DETECTOR_CONSUMER, else the host
# name (the container id), so a replica is unhealthy even while its siblings live. Needs
# DETECTOR_REDIS_URL (and DETECTOR_GROUP if not the default) in the environment; set the
# consumer through DETECTOR_CONSUMER, not --consumer, for the check to see it.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD detector check --consumer "${DETECTOR_CONSUMER:-${HOSTNAME:?}}"

ENTRYPOINT ["detector"]
CMD ["run"]
