# `fmnist serve` in a container: PyTorch's CPU build, the package with its `serve` extra, and one
# model, model.safetensors + model.json, served by a user without privileges.
#
#   mkdir -p model && cp runs/latest/model.safetensors runs/latest/model.json model/
#   docker build -t fmnist-serve .
#   docker run --rm -p 8000:8000 fmnist-serve
#
# Only those two files of the model are copied in (see .dockerignore), so a run folder's
# resume state, logs and older checkpoints never reach the image. BASE and TORCH_INDEX can name
# a mirror; the defaults are the official image and PyTorch's own CPU wheel index.
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# torch first, pinned, from the CPU index: a bare `torch` from PyPI is a CUDA build of several GB
RUN python3 -m venv /opt/venv \
 && pip install --index-url "$TORCH_INDEX" torch==2.13.0

COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install "/src[serve]" && rm -rf /src

RUN useradd --create-home --uid 10001 fmnist
# owned by root and read-only to the server's user
COPY model/model.safetensors model/model.json /model/
USER fmnist
WORKDIR /home/fmnist

EXPOSE 8000
# SIGTERM drains: /readyz turns 503, requests already accepted are answered, then exit 0
STOPSIGNAL SIGTERM
# slim images have no curl. The port opens once the model is loaded and checked (tens of seconds
# on 2 busy cores), so failures in the first 2 minutes do not count
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# exec form: the signal reaches `fmnist serve` itself, not a shell
ENTRYPOINT ["fmnist", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
