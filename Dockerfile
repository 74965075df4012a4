# cvae-dialog images.
#
#   docker build -t cvae-dialog:latest .                    # the API server (default target: runtime)
#   docker build --target train -t cvae-dialog-train .     # the training CLI (adds the `train` extra)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 ...   # CUDA torch
#
# Stages: base (OS, user, env) -> deps (venv, torch, runtime deps) -> runtime-venv (+ the package)
#         deps -> train-venv (+ the train extra and the package); runtime and train copy a venv onto base,
#         so neither final image carries pip caches, the source tree or a compiler.

# Build arguments. Declared here with their defaults; each stage that uses one names it again (ARG NAME)
# to bring it into scope.
ARG BASE_IMAGE=python:3.11-slim
# Where torch comes from. The default is PyTorch's CPU-only index (an unpinned torch from PyPI pulls a
# CUDA build of several GB); a GPU image names a CUDA index, e.g. https://download.pytorch.org/whl/cu130.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extra pip options for every install: "--find-links /wheels" for a local torch wheel, "--index-url URL"
# for a mirror of PyPI (the torch step's own --index-url still wins there).
ARG PIP_EXTRA_ARGS=""
# PIP_CERT (no default): a CA bundle for a TLS-intercepting proxy. pip reads it from the environment,
# also in the isolated environments where it builds packages, which a --cert option would not reach.
# When it is not passed nothing is set. Build args do not persist into the images.

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base

# The venv comes first on PATH, so `python` below is the venv's, whichever interpreter the base has
# (/usr/local/bin/python3 in the official image, /usr/bin/python3 in a Debian one).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" app \
 && useradd --system --uid "${APP_UID}" --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
 && mkdir -p /runs && chown app:app /runs

# ---------------------------------------------------------------------------------------------------
FROM base AS deps
ARG TORCH_INDEX_URL
ARG PIP_EXTRA_ARGS
ARG PIP_CERT

WORKDIR /src
RUN python3 -m venv "${VIRTUAL_ENV}"

# torch alone first: the largest layer, rebuilt only when the pin or the index changes.
COPY constraints.txt ./
RUN pip install ${PIP_EXTRA_ARGS} --index-url "${TORCH_INDEX_URL}" -c constraints.txt torch

# Then the other runtime dependencies, read from pyproject.toml, so that editing code reuses this layer.
COPY pyproject.toml ./
COPY docker/requirements.py docker/
RUN python docker/requirements.py pyproject.toml > /tmp/requirements.txt \
 && pip install ${PIP_EXTRA_ARGS} -c constraints.txt -r /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------------
FROM deps AS runtime-venv
ARG PIP_EXTRA_ARGS
ARG PIP_CERT
COPY . .
# `pip install .`: the package with its data (the default bundle under model/pretrained), no dev extra.
RUN pip install ${PIP_EXTRA_ARGS} --no-deps -c constraints.txt . && pip check

# ---------------------------------------------------------------------------------------------------
FROM deps AS train-venv
ARG PIP_EXTRA_ARGS
ARG PIP_CERT
RUN python docker/requirements.py pyproject.toml train > /tmp/requirements-train.txt \
 && pip install ${PIP_EXTRA_ARGS} -c constraints.txt -r /tmp/requirements-train.txt
COPY . .
RUN pip install ${PIP_EXTRA_ARGS} --no-deps -c constraints.txt ".[train]" && pip check

# ---------------------------------------------------------------------------------------------------
# The training CLI: `docker compose run --rm train train --config tiny.toml --out /runs/NAME`.
FROM base AS train
COPY --from=train-venv /opt/venv /opt/venv
RUN mkdir -p /shared/data
# Runs go to /runs (a volume, owned by app); relative --out paths land there too. The shipped configs
# read their corpus from ../shared/data/<corpus>, relative to the working directory as in a checkout:
# with the corpora mounted at /shared/data they run unchanged. (--config takes a file or the name of a
# shipped config, which the installed package carries.)
WORKDIR /runs
USER app
VOLUME ["/runs"]
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------
# The API server (default target).
FROM base AS runtime
COPY --from=runtime-venv /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/lib/cvae-dialog/healthcheck.py
WORKDIR /home/app
ENV DIALOG_HOST=0.0.0.0 \
    DIALOG_PORT=8000
USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/cvae-dialog/healthcheck.py"]
# Exec form: python is PID 1 and gets SIGTERM itself, so the server stops taking requests and drains.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]
