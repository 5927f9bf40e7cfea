# syntax=docker/dockerfile:1
#
# One image for every classmesh service; the command picks the service:
#
#   docker run classmesh/classmesh:0.1.0 orchestrator --database postgresql+asyncpg://...
#   docker run classmesh/classmesh:0.1.0 media --node-id media-eu-central-1 --region eu-central
#
# Stage "builder" has a compiler and the -dev headers so that any dependency without a wheel for this
# platform can still be built; it installs everything into /opt/venv. Stage "runtime" is python:3.11-slim with
# that venv copied in and nothing else: no compiler, no headers, no curl. The wheels the project uses (aiortc,
# av, pylibsrtp, cryptography, asyncpg, ortools, uvloop) bundle their own native libraries, so the runtime
# needs no extra apt packages.
#
# Keys, passwords and the regions file are NOT baked in: mount them (compose secrets, Kubernetes Secrets and
# ConfigMaps) and point CLASSMESH_TOKEN_PRIVATE_KEY / CLASSMESH_TOKEN_PUBLIC_KEY / CLASSMESH_REGIONS_FILE at
# them. The copy of regions.yaml below is only the embedded default, overridden by a mount at the same path.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential pkg-config \
        libffi-dev libssl-dev \
        libopus-dev libvpx-dev libsrtp2-dev \
        libavformat-dev libavcodec-dev libavdevice-dev libavutil-dev libswscale-dev libswresample-dev \
        libavfilter-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that editing the code does not re-download them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install --upgrade pip setuptools wheel \
 && pip install -r /tmp/requirements.txt

# Then the project itself (no dependency resolution: they are all installed above).
COPY README.md regions.yaml ./
COPY classmesh ./classmesh
COPY core ./core
COPY media ./media
COPY signaling ./signaling
COPY recorder ./recorder
COPY orchestrator ./orchestrator
COPY web ./web
RUN pip install --no-deps . \
 && classmesh --help > /dev/null


FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ARG CLASSMESH_UID=10001
LABEL org.opencontainers.image.title="classmesh" \
      org.opencontainers.image.description="classmesh: orchestrator, signaling, media (SFU) and recorder services" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid ${CLASSMESH_UID} classmesh \
 && useradd --system --uid ${CLASSMESH_UID} --gid classmesh --home-dir /var/lib/classmesh \
        --no-create-home --shell /usr/sbin/nologin classmesh \
 && mkdir -p /var/lib/classmesh/recordings /etc/classmesh \
 && chown -R classmesh:classmesh /var/lib/classmesh

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /src/regions.yaml /etc/classmesh/regions.yaml

# Defaults suited to a container: listen on every interface, JSON logs, files under /var/lib/classmesh.
# CLASSMESH_PORT is deliberately unset: each service keeps its own default port (8700, 8701, 8710, 8720).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLASSMESH_HOST=0.0.0.0 \
    CLASSMESH_LOG_FORMAT=json \
    CLASSMESH_REGIONS_FILE=/etc/classmesh/regions.yaml \
    CLASSMESH_DATA_DIR=/var/lib/classmesh \
    CLASSMESH_STORAGE=/var/lib/classmesh/recordings

# Fail the build, not the first start, if a native library a wheel needs is missing from the slim runtime.
RUN ["python", "-c", "import aiortc, av, asyncpg, uvloop, cryptography, ortools.sat.python.cp_model"]

WORKDIR /var/lib/classmesh
USER ${CLASSMESH_UID}:${CLASSMESH_UID}

# orchestrator, signaling, media, recorder HTTP ports; the media node's default ICE UDP range.
EXPOSE 8700 8701 8710 8720 40000-40999/udp

# /healthz answers 200 while the process is alive (also while it drains). curl is not in this image, so the
# probe is Python's urllib; any exception (refused, timeout, non-2xx) exits non-zero. The port is the one the
# service listens on: its --port flag, else CLASSMESH_PORT, else the default of the subcommand it runs (read
# from /proc/1/cmdline, which is the service, or an init such as docker-init followed by the service).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; a = open('/proc/1/cmdline').read().split(chr(0)); d = {'orchestrator': '8700', 'signaling': '8701', 'media': '8710', 'recorder': '8720'}; f = [x.split('=', 1)[1] for x in a if x.startswith('--port=')] + [a[i + 1] for i, x in enumerate(a[:-1]) if x == '--port']; p = (f or [os.environ.get('CLASSMESH_PORT') or next((d[x] for x in a if x in d), '8700')])[0]; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % p, timeout=4)"]

# SIGTERM starts a graceful drain (readiness goes false, rooms move, then exit); a second SIGTERM cuts it short.
STOPSIGNAL SIGTERM
ENTRYPOINT ["classmesh"]
CMD ["--help"]
