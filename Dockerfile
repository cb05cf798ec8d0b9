# Image for the `avengers` CLI / client (docker compose run --rm avengers ...).
# torch from PyPI brings CUDA libraries; to slim the image, build with
#   --build-arg PIP_EXTRA_INDEX_URL=<a CPU-only torch wheel index>
FROM python:3.11-slim
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY avengers_store ./avengers_store
COPY cli ./cli
COPY sql ./sql
COPY migrations ./migrations
RUN pip install torch==2.13.0 && pip install .
ENTRYPOINT ["avengers"]
CMD ["--help"]
