# The image every kubewire container runs (deploy/, docs/install.md): the one binary as
# its entrypoint; the containers pass a subcommand (`agent`, `dns`, `install-cni`) and
# their non-default flags. From the repository's root:
#   docker build -t REGISTRY/kubewire:TAG .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p kubewire

FROM debian:bookworm-slim
COPY --from=build /src/target/release/kubewire /usr/local/bin/kubewire
ENTRYPOINT ["/usr/local/bin/kubewire"]
