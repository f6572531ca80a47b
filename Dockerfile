# The platform image: one image, one process per container, chosen by the command
# (`journeys worker`, `journeys api`, `journeys topics`). See docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Keep in step with [tool.setuptools] packages in pyproject.toml (tests/unit/test_compose.py).
COPY pyproject.toml README.md ./
COPY events/ events/
COPY journeys/ journeys/
COPY projections/ projections/
COPY streams/ streams/
COPY api/ api/
COPY stack/ stack/
COPY schemas/ schemas/
COPY simulation/ simulation/
RUN pip install ".[postgres]" && rm -rf /src

# Unprivileged user; JOURNEYS_DATA_DIR (Faust's folder) is the only place it writes.
RUN useradd --system --uid 10001 --home-dir /var/lib/journeys --create-home journeys
USER journeys
WORKDIR /var/lib/journeys
ENV JOURNEYS_DATA_DIR=/var/lib/journeys \
    JOURNEYS_API_HOST=0.0.0.0

EXPOSE 8000
ENTRYPOINT ["journeys"]
CMD ["api"]
