# The gateway and the demo shop backends in one small image (one build for every service
# of docker-compose.yml). `docker build --build-arg SWITCHBOARD_REVISION=$(git rev-parse
# --short=12 HEAD) .` stamps the revision (`.git` is not sent to the build).
FROM rust:1.95-bookworm AS build
ARG SWITCHBOARD_REVISION=unknown
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchboard --example demo_shop --example shipping_worker \
 && cp target/release/switchboard target/release/examples/demo_shop target/release/examples/shipping_worker /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchboard
COPY --from=build /usr/local/bin/switchboard /usr/local/bin/demo_shop /usr/local/bin/shipping_worker /usr/local/bin/
WORKDIR /etc/switchboard
COPY switchboard.yaml ./
COPY descriptors ./descriptors
COPY mappings ./mappings
USER switchboard
# Admin on every interface of the container so a published or probed port reaches it;
# publish it only where it should be reachable (docker-compose.yml: host loopback).
ENV SWITCHBOARD_ADMIN=0.0.0.0:9901
EXPOSE 8080 9901
# No curl in the slim image: bash's /dev/tcp asks /healthz on the admin port.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9901 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["switchboard"]
CMD ["serve", "--config", "/etc/switchboard/switchboard.yaml", "--log-format", "json"]
