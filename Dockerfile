# syntax=docker/dockerfile:1
# One image for every service of the platform; docker-compose.yml and deploy/k8s run it with a
# different command per service (the commands of deploy/local/services.conf).
#
#   docker build -t marketdata-platform:local .
#
# Stage 1 bundles the live market page (web/ -> web/dist) with esbuild from npm, so the runtime
# image needs no Node.js and the page fetches nothing from a CDN at run time.
FROM node:20-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

# Stage 2: the Python services.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# dependencies first, so a code change does not reinstall them
COPY pyproject.toml README.md ./
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
RUN pip install -r /tmp/requirements.txt
COPY core/ core/
COPY aggregator/ aggregator/
COPY storage/ storage/
COPY gateway_ws/ gateway_ws/
COPY gateway_rest/ gateway_rest/
COPY fix_gateway/ fix_gateway/
COPY deploy/local/services.conf deploy/local/services.conf
COPY --from=web /src/web/dist/ web/dist/
# the services run from /app (python -m <service>), so the source tree is the install
ENV PYTHONPATH=/app MD_WEB_DIR=/app/web/dist
# /data holds what a service must keep across restarts (FIX sequence store); compose mounts a volume
RUN useradd --system --uid 10001 --no-create-home md && mkdir -p /data/fix_store && chown -R md /data
USER md
# The services read MD_* variables (core/settings.py); compose and k8s set the hosts.
# Listeners: REST 8000, WebSocket 8001, FIX 9876, ops (/metrics, /health) 8011-8014.
EXPOSE 8000 8001 9876 8011 8012 8013 8014
CMD ["python", "-m", "gateway_rest"]
