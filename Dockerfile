# syntax=docker/dockerfile:1
# jewelmatch worker image: CPU PyTorch by default, non-root, model weights baked in at build.
#
#   docker build -t jewelmatch .                                          # CPU (default)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t jewelmatch:cuda .
#
# BASE_IMAGE must provide python3 (3.11+) with venv; scripts/docker-local-build makes one with
# debootstrap where no registry is reachable. WHEELHOUSE lets a build use local wheels only.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG MODEL=efficientnet-lite1+efficientnet-lite2
ARG RUNTIME=openvino
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY wheelhouse /wheelhouse/
# torch first, from the CPU index (or the CUDA one) unless a wheelhouse supplies it
RUN if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /wheelhouse torch==2.14.1 torchvision==0.29.1; \
    else \
        pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1; \
    fi
COPY pyproject.toml README.md /src/
COPY shared /src/shared
COPY worker /src/worker
RUN if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        pip install --no-index --find-links /wheelhouse /src; \
    else \
        pip install /src; \
    fi
# The weights (and the tower's ONNX export for the runtime) are baked in now, never fetched
# or made when a container starts.
RUN JEWELMATCH_MODEL__NAME=${MODEL} JEWELMATCH_MODEL__RUNTIME=${RUNTIME} \
    JEWELMATCH_MODEL__CACHE_DIR=/opt/models JEWELMATCH_LOG__LEVEL=WARNING jewelmatch prepare-model

FROM ${BASE_IMAGE}
ARG MODEL=efficientnet-lite1+efficientnet-lite2
ARG RUNTIME=openvino
RUN useradd --system --uid 10001 --create-home --home-dir /home/jewelmatch jewelmatch \
    && mkdir -p /var/lib/jewelmatch /definitions /backups \
    && chown jewelmatch /var/lib/jewelmatch /definitions /backups
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
# model versions made by `jewelmatch train`: a volume shared by the job and the workers
RUN mkdir -p /opt/models/versions && chown jewelmatch /opt/models/versions
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JEWELMATCH_MODEL__NAME=${MODEL} \
    JEWELMATCH_MODEL__RUNTIME=${RUNTIME} \
    JEWELMATCH_MODEL__CACHE_DIR=/opt/models \
    JEWELMATCH_INDEX__PATH=/var/lib/jewelmatch/index \
    JEWELMATCH_REVIEW__DATABASE=/var/lib/jewelmatch/review.sqlite3 \
    JEWELMATCH_LOG__FORMAT=json \
    JEWELMATCH_OPS__HTTP_PORT=8080
USER 10001
WORKDIR /home/jewelmatch
EXPOSE 8080 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=2)"]
ENTRYPOINT ["jewelmatch"]
CMD ["worker"]
