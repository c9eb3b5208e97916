# The Swarm stack's load balancer: HAProxy from Debian's packages, on the same Debian base as the server's
# image (debian:bookworm-slim; scripts/docker-smoke.sh makes it with debootstrap where no registry is
# reachable). Its configuration comes from the stack (haproxy.cfg as a Swarm config).
#   docker build -t tinyllm-haproxy -f deploy/swarm/haproxy.Dockerfile deploy/swarm
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
USER haproxy
# -W: master-worker (a reload with SIGUSR2 keeps connections); -db: stay in the foreground, log to stderr
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
