# The CUDA trainer: the platform with a CUDA build of the same torch version, for GPU nodes
# (NCCL + bf16). Runs `homefeed train` or one node of `torchrun … -m homefeed.train`.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/homefeed
COPY setup.cfg pyproject.toml README.md ./
COPY homefeed ./homefeed
COPY jobs ./jobs
COPY models ./models
COPY expectations ./expectations
COPY dags ./dags
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==2.13.0" && pip install --no-cache-dir .

ENTRYPOINT ["homefeed"]
CMD ["train", "--help"]
