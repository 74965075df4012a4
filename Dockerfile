# cvae-dialog images.
#
#   docker build -t cvae-dialog:latest .                    # the API server (default target: runtime)
#   docker build --target train -t cvae-dialog-train .     # the training CLI (adds the `train` extra)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 ...   # CUDA torch
#
# Stages: base (OS, user, env) -> deps (venv: torch, then the runtime lock) -> train-deps (+ the train extra at
#         the dev lock's versions); project (the package alone, pip install --target /opt/cvae-dialog).
#         runtime = base + deps' venv + project; train = base + train-deps' venv + project. Dependencies and
#         the project are separate layers, so a code change rebuilds and ships only the small project layer,
#         never torch; neither final image carries pip caches, the source tree or a compiler.
# Versions: requirements/runtime.txt and requirements/dev.txt (`make lock`) pin every package except torch,
#         which constraints.txt pins and TORCH_INDEX_URL provides.

# Build arguments. Declared here with their defaults; each stage that uses one names it again (ARG NAME)
# to bring it into scope.
# The base image, pinned by digest (of python:3.11-slim's multi-platform index) so that a rebuild starts from
# the same files. To move to a newer one (security updates): `docker pull python:3.11-slim`, then
# `docker inspect --format '{{index .RepoDigests 0}}' python:3.11-slim` (or `docker buildx imagetools inspect
# python:3.11-slim`) gives the digest; put it here and in compose.yaml (tests/test_docker.py checks they agree).
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
# Where torch comes from. The default is PyTorch's CPU-only index (an unpinned torch from PyPI pulls a
# CUDA build of several GB); a GPU image names a CUDA index, e.g. https://download.pytorch.org/whl/cu130.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extra pip options for every install: "--find-links /wheels" for a local torch wheel, "--index-url URL"
# for a mirror of PyPI (the torch step's own --index-url still wins there).
ARG PIP_EXTRA_ARGS=""
# A CA bundle for a TLS-intercepting proxy. pip reads PIP_CERT from the environment, also in the isolated
# environments where it builds packages, which a --cert option would not reach; empty (the default) is
# ignored by pip. Build args do not persist into the images.
ARG PIP_CERT=""

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
# The project is installed apart from the venv, in /opt/cvae-dialog (stage project); a .pth file puts it
# on the venv's path.
RUN python3 -m venv "${VIRTUAL_ENV}" \
 && echo /opt/cvae-dialog > "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/cvae-dialog.pth"

# torch alone first, without its dependencies: the largest layer, rebuilt only when the pin or the index
# changes. Its dependencies come with the lock below (for a CUDA build, its nvidia-* packages, which torch
# pins exactly, come from PyPI there).
COPY constraints.txt ./
RUN pip install ${PIP_EXTRA_ARGS} --no-deps --index-url "${TORCH_INDEX_URL}" -c constraints.txt torch

# Then every other runtime package at its locked version.
COPY requirements/runtime.txt requirements/
RUN pip install ${PIP_EXTRA_ARGS} -c constraints.txt -r requirements/runtime.txt torch && pip check

# ---------------------------------------------------------------------------------------------------
FROM deps AS train-deps
ARG PIP_EXTRA_ARGS
ARG PIP_CERT
# The train extra, read from pyproject.toml, at the dev lock's versions (the same as the runtime lock's
# wherever both name a package).
COPY pyproject.toml ./
COPY requirements/dev.txt requirements/
COPY docker/requirements.py docker/
RUN python docker/requirements.py pyproject.toml train > /tmp/requirements-train.txt \
 && pip install ${PIP_EXTRA_ARGS} -c constraints.txt -c requirements/dev.txt -r /tmp/requirements-train.txt \
 && pip check

# ---------------------------------------------------------------------------------------------------
FROM deps AS project
ARG PIP_EXTRA_ARGS
ARG PIP_CERT
COPY . .
# The package with its data (the default bundle under model/pretrained), without dependencies: they are in
# the venv, where `pip check` finds them.
RUN pip install ${PIP_EXTRA_ARGS} --no-deps --target /opt/cvae-dialog . && pip check

# ---------------------------------------------------------------------------------------------------
# The training CLI: `docker compose run --rm train train --config tiny.toml --out /runs/NAME`.
FROM base AS train
COPY --from=train-deps /opt/venv /opt/venv
COPY --from=project /opt/cvae-dialog /opt/cvae-dialog
COPY docker/train-entrypoint.sh /usr/local/lib/cvae-dialog/train-entrypoint.sh
RUN mkdir -p /shared/data
# Runs go to /runs (a volume, owned by app); relative --out paths land there too. The shipped configs
# read their corpus from ../shared/data/<corpus>, relative to the working directory as in a checkout:
# with the corpora mounted at /shared/data they run unchanged. (--config takes a file or the name of a
# shipped config, which the installed package carries.)
WORKDIR /runs
USER app
VOLUME ["/runs"]
# The entrypoint notes what to mount when /shared/data is empty, then execs `python -m training`.
ENTRYPOINT ["sh", "/usr/local/lib/cvae-dialog/train-entrypoint.sh"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------
# The API server (default target).
FROM base AS runtime
COPY --from=deps /opt/venv /opt/venv
COPY --from=project /opt/cvae-dialog /opt/cvae-dialog
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
