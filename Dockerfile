# Images of the Whisper -> Hailo toolchain (built by `invoke image`, pipeline/host/docker_engine.py):
#   export       CPU: torch (CPU), transformers, onnx, onnxruntime, onnxslim, calibration deps,
#                espeak-ng + sox, our package. Base: python:3.11-slim-bookworm pinned by digest.
#   dfc-cuda11   one target per CUDA stack (pipeline/dfc_images.py IMAGES; the DFC wheel's version
#   dfc-cuda12   picks it through DFC_RELEASES): NVIDIA CUDA/cuDNN runtime pinned by digest
#                (docker/images.lock or the table), the Python that base ships (3.10 on Ubuntu
#                22.04), the user's DFC wheel from vendor/, onnxruntime, our package.
# docker_engine assembles the build context (Dockerfile, docker/, pipeline/, calib/,
# vendor/<the one DFC wheel>, wheelhouse/) and always passes BASE_IMAGE; see docker/README.md
# for pinning and offline builds.
#
# Stage order matters: the classic builder (the one docker-py drives) builds EVERY stage before
# --target, so the DFC stages come first and skip their work when no DFC_WHEEL is given, and the
# export stages come last (building a DFC image never installs torch).

ARG BASE_IMAGE=nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04@sha256:85fb7ac694079fff1061a0140fd5b5a641997880e12112d92589c3bbb1e8b7ca

# --- Python, non-root user, cache dirs --------------------------------------------------------
FROM ${BASE_IMAGE} AS python-base
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY docker/install-system.sh /usr/local/sbin/install-system.sh
RUN sh /usr/local/sbin/install-system.sh python

# --- DFC venv (skipped when building export) --------------------------------------------------
FROM python-base AS dfc-venv
ARG DFC_WHEEL=
ARG DFC_WHEEL_SHA256=
COPY wheelhouse/ /wheelhouse/
COPY vendor/ /build/vendor/
COPY docker/constraints-dfc.txt docker/install-venv.sh /build/
RUN if [ -z "$DFC_WHEEL" ]; then echo "no DFC_WHEEL: DFC venv skipped"; mkdir -p /opt/venv; \
    else sh /build/install-venv.sh dfc "$DFC_WHEEL" "$DFC_WHEEL_SHA256"; fi

# --- DFC images: only /opt/venv is copied over, so the wheelhouse and the wheel stay behind -----
FROM python-base AS dfc
ENV PATH=/opt/venv/bin:$PATH \
    CUDA_CACHE_PATH=/var/cache/whisper-hailo/cuda \
    CUDA_CACHE_MAXSIZE=4294967296
COPY --from=dfc-venv /opt/venv /opt/venv
# our package: plain sources on sys.path (install-venv.sh's .pth); last, so edits rebuild little
COPY pipeline/ /opt/toolchain/pipeline/
COPY calib/ /opt/toolchain/calib/
USER toolchain
WORKDIR /home/toolchain

# The CUDA stack is the base image (BASE_IMAGE, chosen by the table); the targets differ in name and
# label so each stack's image is tagged and cached on its own. CUDA_MODULE_LOADING=LAZY is set per
# stage container from the table (CUDA >= 11.7), not here.
FROM dfc AS dfc-cuda11
LABEL org.opencontainers.image.title="whisper-hailo dfc-cuda11 (CUDA 11.8, cuDNN 8.9: DFC 3.25-3.31, 5.0)"

FROM dfc AS dfc-cuda12
LABEL org.opencontainers.image.title="whisper-hailo dfc-cuda12 (CUDA 12.5.1, cuDNN 9: DFC 3.33, 5.1-5.4)"

# --- export image ------------------------------------------------------------------------------
FROM python-base AS export-venv
COPY wheelhouse/ /wheelhouse/
COPY docker/constraints-export.txt docker/install-venv.sh /build/
RUN sh /build/install-venv.sh export

FROM python-base AS export
RUN sh /usr/local/sbin/install-system.sh export
ENV PATH=/opt/venv/bin:$PATH
COPY --from=export-venv /opt/venv /opt/venv
COPY pipeline/ /opt/toolchain/pipeline/
COPY calib/ /opt/toolchain/calib/
USER toolchain
WORKDIR /home/toolchain
LABEL org.opencontainers.image.title="whisper-hailo export (CPU)"
