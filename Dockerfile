# The cluster image: one static binary that is the controller (`agent-sandbox controller`), the
# router (`agent-sandbox router`) and, started under the name sandboxd, the in-sandbox runtime.
#
#   docker build -t agent-sandbox:dev .
#
# In a sandbox image of your own, take sandboxd from it:
#   COPY --from=agent-sandbox:dev /agent-sandbox /usr/local/bin/sandboxd
#   ENTRYPOINT ["/usr/local/bin/sandboxd"]
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p agent-sandbox \
    && cp target/x86_64-unknown-linux-musl/release/agent-sandbox /agent-sandbox

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /agent-sandbox /agent-sandbox
COPY --from=build /agent-sandbox /usr/local/bin/sandboxd
USER 65532:65532
ENTRYPOINT ["/agent-sandbox"]
