# Builds smscoord, smsnode and smsmon into one small runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin smscoord --bin smsnode --bin smsmon

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/smsmesh --create-home smsmesh
COPY --from=build /src/target/release/smscoord /src/target/release/smsnode /src/target/release/smsmon /usr/local/bin/
USER smsmesh
WORKDIR /var/lib/smsmesh
EXPOSE 50051
CMD ["smscoord", "--listen", "0.0.0.0:50051"]
