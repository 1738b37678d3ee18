# etcd for the fleet example (compose-fleet.yaml): Debian's etcd-server on the same base as the
# router's image. Built by compose; RUNTIME_IMAGE=terminus-local/debian:bookworm uses the local
# base image (docker/build-base-images.sh) on machines without a registry, where apt still
# reaches Debian's packages.
ARG RUNTIME_IMAGE=debian:bookworm-slim
FROM ${RUNTIME_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends etcd-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/etcd && chown 10001:10001 /var/lib/etcd
# etcd's data lives in the volume mounted here; it never holds a usable private key (the
# routers seal keys with the fleet key before writing them).
USER 10001:10001
WORKDIR /var/lib/etcd
ENTRYPOINT ["/usr/bin/etcd"]
