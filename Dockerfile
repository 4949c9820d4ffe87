# ferry in a container: built with the same toolchain the repository uses, run as a non-root user.
# Untested on the machines ferry is developed on (they run no Docker engine).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry-agent && strip target/release/ferry

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/ferry ferry && mkdir -p /var/lib/ferry && chown ferry /var/lib/ferry
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
USER ferry
VOLUME /var/lib/ferry
EXPOSE 9187
ENTRYPOINT ["ferry"]
CMD ["run", "--config", "/etc/ferry/ferry.toml"]
