# Builds the gateway and the demo shop backends into one small image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchboard --example demo_shop --example shipping_worker \
 && cp target/release/switchboard target/release/examples/demo_shop target/release/examples/shipping_worker /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/switchboard /usr/local/bin/demo_shop /usr/local/bin/shipping_worker /usr/local/bin/
WORKDIR /etc/switchboard
COPY switchboard.yaml ./
COPY descriptors ./descriptors
COPY mappings ./mappings
EXPOSE 8080 9901
ENTRYPOINT ["switchboard"]
CMD ["serve", "--config", "/etc/switchboard/switchboard.yaml", "--log-format", "json"]
