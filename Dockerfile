# syntax=docker/dockerfile:1
#
# agentd container image.
#   docker build -t agentd .
#   docker run --rm -e AGENTD_REDIS_URL=redis://redis.example:6379/0 -e AGENTD_AGENT_ID=a1 agentd
# Configuration is by environment (AGENTD_*; `agentd help settings`), or a JSON
# file mounted into the container and named by AGENTD_CONFIG.
# Checked statically by test/static/deploy.test.ts (no Docker engine where this
# project is developed); docs/operations.md#container.

# Exact version: bump it deliberately (and the test keeps it exact).
ARG NODE_IMAGE=node:24.21.0-bookworm-slim

# --- production dependencies, with the optional native addon (unix-dgram,
# sd_notify for Podman's --sdnotify) compiled here --------------------------
FROM ${NODE_IMAGE} AS deps
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the package's own "prepare" script would run the build,
# which needs devDependencies. Then the one dependency that has to compile.
RUN npm ci --omit=dev --ignore-scripts \
 && (npm rebuild unix-dgram || echo "unix-dgram not built: sd_notify falls back to systemd-notify") \
 && npm cache clean --force

# --- build: TypeScript to dist/ (devDependencies live only here) ------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- runtime ---------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
# tini as PID 1: forwards SIGTERM to node and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    AGENTD_HTTP_HOST=0.0.0.0 \
    AGENTD_HTTP_PORT=9464
# Plugin paths given by environment resolve against this directory:
# AGENTD_PLUGINS=./examples/plugins/log-events.js
WORKDIR /app
# The code stays owned by root: the daemon's user can read it, not change it.
COPY package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY config ./config
COPY examples ./examples
# The image's unprivileged user (uid 1000).
USER node
EXPOSE 9464
# SIGTERM starts the graceful stop (drain up to AGENTD_DRAIN_TIMEOUT_MS, 8 s);
# give the container more than that: docker stop -t 15, compose stop_grace_period.
STOPSIGNAL SIGTERM
# Liveness: /healthz answers 200 while the process and its event loop are alive.
# No curl in the slim image, so node itself asks. Needs AGENTD_HTTP_PORT != 0.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.AGENTD_HTTP_PORT||9464)+'/healthz',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/bin/agentd.js", "run"]
