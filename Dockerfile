# hookgate: multi-stage build, small non-root runtime image.
#   docker build -t hookgate .
#   docker run --rm -p 8080:8080 -v "$PWD/config:/etc/hookgate:ro" hookgate run --config /etc/hookgate/hookgate.toml

FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
# Benches and tests are not needed for the binary; keep the manifest's targets resolvable.
COPY benches ./benches
RUN cargo build --release --locked --bin hookgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hookgate /usr/local/bin/hookgate
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/hookgate"]
CMD ["run", "--config", "/etc/hookgate/hookgate.toml"]
