# Builds the lockd server. Run: docker build -t lockd . && docker run -p 7070:7070 lockd
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p lockd --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/lockd --create-home lockd
COPY --from=build /src/target/release/lockd /usr/local/bin/lockd
USER lockd
VOLUME /var/lib/lockd
EXPOSE 7070
# Listening beyond loopback requires API keys (LOCKD_API_KEYS) or --insecure-no-auth.
ENTRYPOINT ["lockd"]
CMD ["serve", "--listen", "0.0.0.0:7070", "--data-dir", "/var/lib/lockd"]
