# knoway: both binaries on debian:bookworm-slim, non-root, runtime libraries only.
#   docker build -t knoway .
#   docker run -p 8080:8080 -v $PWD/examples/quickstart.yaml:/etc/knoway/knoway.yaml knoway
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config \
      libmicrohttpd-dev libcurl4-openssl-dev libyajl-dev libyaml-dev libssl-dev \
      libsystemd-dev zlib1g-dev libhiredis-dev libpq-dev libmimalloc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
 && cmake --build /build -j"$(nproc)" \
 && install -D -m 0755 /build/dataplane/knoway-dataplane /out/usr/bin/knoway-dataplane \
 && if [ -x /build/controller/knoway-controller ]; then \
      install -D -m 0755 /build/controller/knoway-controller /out/usr/bin/knoway-controller; fi

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libmicrohttpd12 libcurl4 \
      libyajl2 libyaml-0-2 libssl3 libsystemd0 libhiredis0.14 libpq5 zlib1g libmimalloc2.0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 knoway \
 && useradd --system --uid 65532 --gid knoway --home-dir /var/lib/knoway --shell /usr/sbin/nologin knoway \
 && install -d -o knoway -g knoway /var/lib/knoway /etc/knoway
COPY --from=build /out/ /
USER 65532:65532
EXPOSE 8080 9901 18000
ENTRYPOINT ["/usr/bin/knoway-dataplane"]
CMD ["-c", "/etc/knoway/knoway.yaml"]
