# syntax=docker/dockerfile:1
# pintle's transformer (Node) in /app/transformer, run as uid/gid 10001.
# Build from the repository root (make images):
#   docker build -f deploy/docker/transformer.Dockerfile -t pintle/pintle-transformer:0.1.0 .
# The build stage installs with tools/deps.sh, the same steps as `make deps`:
# its apt packages (python3 and a compiler for isolated-vm's native module)
# and `npm install` from transformer/package-lock.json. The runtime stage is
# the same Node version (the native module's ABI), without the toolchain.
ARG BUILD_IMAGE=node:20.20.2-bookworm
ARG RUNTIME_IMAGE=node:20.20.2-bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY tools/ tools/
COPY transformer/package.json transformer/package-lock.json transformer/
RUN tools/deps.sh
COPY transformer/src/ transformer/src/

FROM ${RUNTIME_IMAGE}
RUN groupadd --gid 10001 pintle \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin pintle
COPY --from=build /src/transformer/ /app/transformer/
ENV NODE_ENV=production HOST=0.0.0.0 PORT=9090
WORKDIR /app/transformer
USER 10001:10001
EXPOSE 9090
STOPSIGNAL SIGTERM
CMD ["node", "/app/transformer/src/server.js"]
