#!/usr/bin/env bash
# Three replicas on a one-node Docker Swarm behind HAProxy (deploy/swarm/), under streaming load, through a
# rolling update and the death of one replica.
#
#   bash scripts/docker-smoke.sh scripts/swarm-test.sh     # as CI does: the smoke test's daemon and image
#   bash scripts/swarm-test.sh                             # with a running daemon and the image built
#
#   1. docker swarm init, unless this node already is in a swarm (of one node: the images are local)
#   2. builds the balancer image (deploy/swarm/haproxy.Dockerfile) and a second server image (the first one
#      with a new label), deploys deploy/swarm/stack.yaml with 3 replicas, waits until all are healthy
#   3. streams from 127.0.0.1 through the balancer (scripts/swarm_load.py) for at least 60 s, and meanwhile
#      (1) a rolling update to the second image (stack deploy with the new tag; start-first, one at a time)
#      (2) docker kill of one replica's container, timing how long until 3 replicas are healthy again
#   4. reports requests sent, completed and failed per phase, and fails if a target is missed: no failure
#      outside the kill; during it only streams on the killed replica, each with a connection error; back
#      to 3 healthy replicas within 30 s (TINYLLM_SWARM_RECOVERY_S)
#   5. removes the stack, the images it built, and the swarm if it made it (the base images stay)
#
# Settings (environment): TINYLLM_IMAGE (tinyllm:smoke), TINYLLM_DOCKER (docker), TINYLLM_SWARM_TIMEOUT
# (600 s for the whole run), TINYLLM_SWARM_CLIENTS (4 streams at once), TINYLLM_SWARM_MIN_LOAD (60 s),
# TINYLLM_SWARM_RECOVERY_S (30: the most seconds from the kill to 3 healthy replicas).
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${TINYLLM_IMAGE:-tinyllm:smoke}
read -r -a DOCKER <<<"${TINYLLM_DOCKER:-docker}"
DEADLINE=$((SECONDS + ${TINYLLM_SWARM_TIMEOUT:-600}))
CLIENTS=${TINYLLM_SWARM_CLIENTS:-4}
MIN_LOAD=${TINYLLM_SWARM_MIN_LOAD:-60}
STACK=tinyllm-swarm-test
IMAGE_V2=tinyllm:swarm-test-v2
BALANCER_IMAGE=tinyllm-haproxy:swarm-test
PYTHON=.venv/bin/python

log() { printf '[swarm-test %3ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
check_time() { ((SECONDS < DEADLINE)) || die "out of time (TINYLLM_SWARM_TIMEOUT=${TINYLLM_SWARM_TIMEOUT:-600}s)"; }
now() { date +%s.%N; }

STATE=$(mktemp -d /tmp/tinyllm-swarm-test.XXXXXX)
MADE_SWARM=
LOAD_PID=
DEPLOYED=

cleanup() {
    local rc=$?
    set +e
    if [[ -n $LOAD_PID ]]; then
        kill "$LOAD_PID" 2>/dev/null
        wait "$LOAD_PID" 2>/dev/null
    fi
    if ((rc != 0)) && [[ -n $DEPLOYED ]]; then
        log "the balancer's last lines:"
        timeout 20 "${DOCKER[@]}" service logs --tail 30 "${STACK}_balancer" 2>&1 | sed 's/^/    /' >&2
    fi
    if [[ -n $DEPLOYED ]]; then
        timeout 60 "${DOCKER[@]}" stack rm "$STACK" >/dev/null 2>&1
        # stack rm returns at once; the containers and the network go in the background
        for _ in $(seq 60); do
            [[ -z $("${DOCKER[@]}" ps -aq --filter "label=com.docker.stack.namespace=$STACK") ]] &&
                ! "${DOCKER[@]}" network inspect "${STACK}_tinyllm" >/dev/null 2>&1 && break
            sleep 1
        done
    fi
    if [[ -n $MADE_SWARM ]]; then
        timeout 60 "${DOCKER[@]}" swarm leave --force >/dev/null 2>&1 && log "left the swarm this script made"
        timeout 30 "${DOCKER[@]}" network rm docker_gwbridge >/dev/null 2>&1 # made by swarm init
    fi
    timeout 60 "${DOCKER[@]}" rmi "$IMAGE_V2" "$BALANCER_IMAGE" >/dev/null 2>&1
    rm -rf "$STATE"
    ((rc == 0)) || log "FAILED (exit status $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One run at a time on a machine: the stack name, the image tags and the swarm are shared.
exec 8>/tmp/tinyllm-swarm-test.lock
flock -w 60 8 || die "another swarm-test run holds /tmp/tinyllm-swarm-test.lock"

timeout 20 "${DOCKER[@]}" info >/dev/null 2>&1 \
    || die "no Docker daemon: run bash scripts/docker-smoke.sh scripts/swarm-test.sh (it starts one)"
"${DOCKER[@]}" image inspect "$IMAGE" >/dev/null 2>&1 \
    || die "no image $IMAGE: run bash scripts/docker-smoke.sh scripts/swarm-test.sh (it builds it)"
base=$(awk 'toupper($1) == "FROM" { print $2; exit }' deploy/swarm/haproxy.Dockerfile)
"${DOCKER[@]}" image inspect "$base" >/dev/null 2>&1 || die "no base image $base: scripts/docker-smoke.sh makes it"
"$PYTHON" -c "import httpx" 2>/dev/null || die "no $PYTHON with httpx for the load: make setup"

# --- 1. swarm -------------------------------------------------------------------------------------------
check_time
case $("${DOCKER[@]}" info --format '{{.Swarm.LocalNodeState}}') in
inactive)
    timeout 60 "${DOCKER[@]}" swarm init --advertise-addr 127.0.0.1 >/dev/null
    MADE_SWARM=1
    log "swarm: initialised a one-node swarm" ;;
active)
    nodes=$("${DOCKER[@]}" info --format '{{.Swarm.Nodes}}')
    ((nodes == 1)) || die "this node is in a swarm of $nodes nodes; the test's images exist only here"
    log "swarm: this node's one-node swarm" ;;
*) die "swarm state: $("${DOCKER[@]}" info --format '{{.Swarm.LocalNodeState}}')" ;;
esac

# --- 2. images and deployment ---------------------------------------------------------------------------
check_time
started=$SECONDS
timeout 300 "${DOCKER[@]}" build -q -t "$BALANCER_IMAGE" -f deploy/swarm/haproxy.Dockerfile deploy/swarm >/dev/null
printf 'FROM %s\nLABEL org.opencontainers.image.version=swarm-test-v2\n' "$IMAGE" \
    | timeout 120 "${DOCKER[@]}" build -q -t "$IMAGE_V2" - >/dev/null
log "images: $BALANCER_IMAGE (HAProxy $("${DOCKER[@]}" run --rm "$BALANCER_IMAGE" haproxy -v | awk 'NR == 1 { print $3 }')), $IMAGE_V2; $((SECONDS - started))s"

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
export TINYLLM_BALANCER_IMAGE=$BALANCER_IMAGE TINYLLM_PORT=$PORT TINYLLM_REPLICAS=3
# 3 replicas share this machine's cores: one torch thread each, and a smaller KV cache
export TINYLLM_THREADS=${TINYLLM_THREADS:-1} TINYLLM_MAX_BATCH=${TINYLLM_MAX_BATCH:-16}

deploy() { # deploy IMAGE
    TINYLLM_IMAGE=$1 timeout 120 "${DOCKER[@]}" stack deploy --resolve-image never \
        -c deploy/swarm/stack.yaml "$STACK" >"$STATE/deploy.log" 2>&1 || { cat "$STATE/deploy.log" >&2; die "stack deploy"; }
}
healthy_replicas() {
    "${DOCKER[@]}" ps -q --filter "label=com.docker.swarm.service.name=${STACK}_server" --filter health=healthy | wc -l
}

started=$SECONDS
deploy "$IMAGE"
DEPLOYED=1
until (($(healthy_replicas) == 3)) && "$PYTHON" -c 'import httpx, sys; httpx.get(sys.argv[1] + "/health", timeout=3).raise_for_status()' "$URL" 2>/dev/null; do
    ((SECONDS - started < 300)) || die "3 healthy replicas and the balancer did not come up in 300 s"
    check_time
    sleep 1
done
log "deployed stack $STACK: 3 healthy replicas behind $URL in $((SECONDS - started))s"

# --- 3. load, rolling update, kill ----------------------------------------------------------------------
load_started=$SECONDS
"$PYTHON" scripts/swarm_load.py run "$URL" "$STATE/requests.jsonl" --stop-file "$STATE/stop" \
    --clients "$CLIENTS" --max-new-tokens 48 --max-seconds $((DEADLINE - SECONDS)) &
LOAD_PID=$!
log "load: $CLIENTS streams at once from 127.0.0.1"
sleep 10

update_start=$(now)
started=$SECONDS
deploy "$IMAGE_V2"
log "rolling update to $IMAGE_V2 started"
# Done when Swarm has replaced every task and the last old replica has drained its streams and exited.
until [[ $("${DOCKER[@]}" service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${STACK}_server") == completed &&
         $("${DOCKER[@]}" ps --filter "label=com.docker.swarm.service.name=${STACK}_server" --format '{{.Image}}' | sort -u) == "$IMAGE_V2" ]]; do
    state=$("${DOCKER[@]}" service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}: {{.UpdateStatus.Message}}{{end}}' "${STACK}_server")
    [[ $state != rollback* && $state != paused* ]] || die "rolling update: $state"
    ((SECONDS - started < 300)) || die "the rolling update did not finish in 300 s ($state)"
    check_time
    sleep 0.5
done
update_end=$(now)
log "rolling update done in $((SECONDS - started))s: $(healthy_replicas) healthy replicas, all on $IMAGE_V2"
sleep 10

check_time
victim=$("${DOCKER[@]}" ps -q --filter "label=com.docker.swarm.service.name=${STACK}_server" | head -n1)
victim_ip=$("${DOCKER[@]}" inspect -f "{{(index .NetworkSettings.Networks \"${STACK}_tinyllm\").IPAddress}}" "$victim")
kill_time=$(now)
"${DOCKER[@]}" kill "$victim" >/dev/null
killed=$(now) # docker kill returns once the container is dead
log "killed replica $victim_ip (container ${victim:0:12}) in $(awk -v a="$kill_time" -v b="$killed" 'BEGIN { printf "%.1f", b - a }') s"
until (($(healthy_replicas) == 3)); do
    check_time
    sleep 0.2
done
recovered=$(now)
newest=$("${DOCKER[@]}" ps -q --filter "label=com.docker.swarm.service.name=${STACK}_server" | head -n1)
replaced=$(date -d "$("${DOCKER[@]}" inspect -f '{{.State.StartedAt}}' "$newest")" +%s.%N)
log "3 healthy replicas again after $(awk -v a="$kill_time" -v b="$recovered" 'BEGIN { printf "%.1f", b - a }') s" \
    "(the new container started after $(awk -v a="$kill_time" -v b="$replaced" 'BEGIN { printf "%.1f", b - a }') s)"

while ((SECONDS - load_started < MIN_LOAD)); do sleep 1; done
sleep 5
touch "$STATE/stop"
wait "$LOAD_PID" || die "the load generator failed"
LOAD_PID=
log "load stopped after $((SECONDS - load_started))s"

# --- 4. report ------------------------------------------------------------------------------------------
printf '{"update_start": %s, "update_end": %s, "kill": %s, "killed": %s, "killed_replica": "%s", "recovered": %s}\n' \
    "$update_start" "$update_end" "$kill_time" "$killed" "$victim_ip" "$recovered" >"$STATE/events.json"
"$PYTHON" scripts/swarm_load.py report "$STATE/requests.jsonl" "$STATE/events.json" \
    --recovery-target "${TINYLLM_SWARM_RECOVERY_S:-30}" || die "a target was missed"
log "OK"
