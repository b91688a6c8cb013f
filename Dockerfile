# detector: real-time anomaly detection for Redis Streams.
#
#   docker build -t detector .
#   docker run --rm -e DETECTOR_REDIS_URL=redis://host:6379/0 -p 9100:9100 detector
#
# Configured through DETECTOR_* environment variables only (see `detector run --help`). Every
# dependency ships binary wheels (amd64 and arm64), so the image needs no compiler.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DETECTOR_METRICS_PORT=9100

# A fixed non-root uid, so volume permissions and policies can name it.
RUN groupadd --system --gid 10001 detector \
    && useradd --system --uid 10001 --gid detector --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin detector

# Build from a throwaway copy: the wheel (with the `detector.models` specs) lands in
# site-packages and the source tree is removed, so nothing can shadow the installed package.
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY detector ./detector
COPY models ./models
RUN pip install --no-cache-dir . && rm -rf /tmp/src

WORKDIR /app
# Fail the build if the model specs did not make it into the wheel.
RUN detector models
# The demo producer (compose profile `demo`) runs from this image too.
COPY deploy ./deploy

# Numeric, so runtimes can verify it is not root (Kubernetes runAsNonRoot).
USER 10001:10001

EXPOSE 9100

# A live worker refreshes its health key every second; `check` reads it (exit 0 or 1).
# Needs DETECTOR_REDIS_URL (and DETECTOR_GROUP if not the default) in the environment.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["detector", "check"]

ENTRYPOINT ["detector"]
CMD ["run"]
