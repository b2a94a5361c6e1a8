# zlog broker image; docker-compose.yml also runs examples/worker.py from it.
# Not built on the project's machines (no Docker engine there): see
# docs/systemd.md, "Containers".
FROM python:3.11-slim

# The broker's user; the worker runs as the same user, so both reach the
# socket in the shared volume without widening its mode.
RUN groupadd --system --gid 10001 zlog \
    && useradd --system --uid 10001 --gid zlog --home-dir /var/lib/zlog zlog \
    && install -d -o zlog -g zlog -m 2750 /run/zlog \
    && install -d -o zlog -g zlog -m 0750 /var/lib/zlog

WORKDIR /opt/zlog
COPY pyproject.toml README.md ./
COPY zlog ./zlog
COPY examples/worker.py examples/broker.toml ./examples/
RUN pip install --no-cache-dir .

USER zlog
ENV ZLOG_SOCKET=/run/zlog/broker.sock \
    ZLOG_SPOOL_PATH=/var/lib/zlog/spool.db
VOLUME ["/run/zlog", "/var/lib/zlog"]
# The healthcheck asks the broker itself: 0 healthy, 1 spooling, 2 absent.
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s \
    CMD ["zlog", "status", "--timeout-s", "5"]
ENTRYPOINT ["zlog"]
CMD ["broker"]
