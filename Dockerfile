# The avengers-store image: the gateway (`avengers serve`, the default command) and the CLI
# (`docker compose run --rm avengers ...`). Dependencies come from the runtime lock, every package
# pinned with its hashes; the package itself goes on top without dependencies. See
# docs/operations.md.
FROM python:3.11-slim

# torch is the 2.13.0 CPU build, which the default index does not carry; the lock's hash checks
# the file wherever it comes from.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    AVENGERS_HOME=/data

WORKDIR /app

# The lock first, so the layer with the dependencies is rebuilt only when the lock changes.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-cache-dir --require-hashes --extra-index-url "${TORCH_INDEX_URL}" \
        -r requirements/runtime.txt

COPY pyproject.toml setup.py README.md ./
COPY avengers_store ./avengers_store
COPY cli ./cli
COPY sql ./sql
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info

RUN useradd --system --uid 10001 --create-home avengers \
    && mkdir -p /data \
    && chown avengers /data
USER 10001

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
ENTRYPOINT ["avengers"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
