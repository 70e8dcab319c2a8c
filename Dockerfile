# syntax=docker/dockerfile:1
# hotlead: multi-stage build. The runtime image holds the compiled JavaScript, the
# production dependencies and the SQL migrations; it runs as a non-root user under
# tini, keeps PGlite data (when DATABASE_URL is unset) in the /data volume, and
# reports health through GET /healthz.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    PORT=3000 \
    DATA_DIR=/data
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY drizzle ./drizzle
COPY voximplant ./voximplant
# Code and dependencies stay owned by root (read-only for the service); only the
# PGlite folder is the service's.
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 3000
# Liveness. Balancers should use GET /readyz (database reachable, not draining).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/healthz').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"
# tini (PID 1) forwards SIGTERM to node and reaps; hotlead drains within 10 s, so give
# `docker stop` a little more than that (compose: stop_grace_period: 15s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/main.js"]
