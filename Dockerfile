# segd: build with the Rust toolchain, run on a small non-root image.
#   docker build -t segd .
#   docker run -e DATABASE_URL=postgres://... -e SEGD_JWT_SECRET=... -p 50051:50051 segd
# The image needs DATABASE_URL: the private PostgreSQL cluster segd runs
# for a newcomer is not in it.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes rebuild only segd.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked || true
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && cp target/release/segd /segd

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /segd /usr/local/bin/segd
USER 65532:65532
EXPOSE 50051 9090
ENV SEGD_LISTEN=0.0.0.0:50051 SEGD_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/segd"]
CMD ["serve"]
