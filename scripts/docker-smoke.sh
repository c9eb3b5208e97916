#!/usr/bin/env bash
# Build the Docker image and prove it serves: from a bare Debian machine (as root) to answered requests.
#
#   1. apt-get installs docker.io, iptables and debootstrap if missing; starts dockerd if none is running
#   2. makes the Dockerfile's FROM image without a registry (debootstrap + docker import), once
#   3. builds the image, with this machine's local CPU torch wheel and extra CA certificates, if any
#   4. runs it with a published port on 127.0.0.1, waits for /health and for Docker's HEALTHCHECK,
#      checks that it serves every bundled model (those of checkpoints/shakespeare and checkpoints/multilingual
#      that exist), each in the native step (compiled in the builder stage: the runtime image has no compiler),
#      and that each answers /v1/generate and /v1/attention (maps and summary), then stops it
#      (SIGTERM must stop it cleanly);
#      then once more with a checkpoint folder mounted, TINYLLM_CHECKPOINT / TINYLLM_PORT set and a
#      read-only root filesystem (as deploy/kubernetes/ runs it), checking a PNG heatmap there too
#   5. prints the image size; runs the scripts named as arguments, if any, with this daemon and image
#      (TINYLLM_IMAGE, TINYLLM_DOCKER set); removes the container, its temporary files, and the daemon
#      it started
#
#   bash scripts/docker-smoke.sh                            # the smoke test
#   bash scripts/docker-smoke.sh scripts/swarm-test.sh      # then the Swarm test, as CI runs them
#
# Idempotent: the base image and the build cache are kept, so a second run only rebuilds what changed.
# Every step has a time limit, and the whole run stops after TINYLLM_SMOKE_TIMEOUT seconds.
# Settings (environment): TINYLLM_SMOKE_IMAGE (tinyllm:smoke), TINYLLM_SMOKE_TIMEOUT (600),
# DEBIAN_MIRROR (default: the bookworm mirror in /etc/apt/sources.list*, else deb.debian.org).
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${TINYLLM_SMOKE_IMAGE:-tinyllm:smoke}
DEADLINE=$((SECONDS + ${TINYLLM_SMOKE_TIMEOUT:-600}))
BASE_IMAGE=$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)
# The torch version of the CPU image's lock file (torch==2.13.0+cpu there).
TORCH_VERSION=$(sed -n 's/^torch==\([^+ ]*\).*/\1/p' deploy/requirements/cpu.txt)
WHEEL_DIR=build/docker-wheels
CA_DIR=/usr/local/share/ca-certificates
LABEL=tinyllm-docker-smoke

log() { printf '[docker-smoke %3ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# check_time: fails once the whole run is past its deadline. limit N: N seconds, or what is left if less.
check_time() { ((SECONDS < DEADLINE)) || die "out of time (TINYLLM_SMOKE_TIMEOUT=${TINYLLM_SMOKE_TIMEOUT:-600}s)"; }
limit() {
    local left=$((DEADLINE - SECONDS))
    ((left > 1)) || left=1
    echo $((left < $1 ? left : $1))
}

# run_logged NAME SECONDS CMD...: runs CMD with its output in a log; on failure shows the log's end.
run_logged() {
    local name=$1 seconds rc=0
    check_time
    seconds=$(limit "$2")
    shift 2
    # In the background so that a signal to this script is handled at once (see on_signal).
    timeout "$seconds" "$@" >"$STATE/$name.log" 2>&1 &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=
    if ((rc != 0)); then
        tail -n 40 "$STATE/$name.log" >&2
        ((rc == 124)) && die "$name: timed out after ${seconds}s"
        die "$name: exit status $rc"
    fi
}

STATE=$(mktemp -d /tmp/tinyllm-docker-smoke.XXXXXX)
DOCKERD_PID=
CHILD=
CONTAINER=
MADE_BUILD_DIR=
LOCKED=

cleanup() {
    local rc=$?
    set +e
    if [[ -n $CONTAINER ]]; then
        timeout 30 "${DOCKER[@]}" rm -f "$CONTAINER" >/dev/null 2>&1
    fi
    if [[ -n $LOCKED ]]; then
        rm -rf "$WHEEL_DIR"
        [[ -n $MADE_BUILD_DIR ]] && rmdir build 2>/dev/null
    fi
    if [[ -n $DOCKERD_PID ]]; then
        log "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL "$DOCKERD_PID" 2>/dev/null
    fi
    # debootstrap mounts /proc and /sys in the root it builds; never delete through a mount.
    awk -v d="$STATE/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
    rm -rf --one-file-system "$STATE"
    ((rc == 0)) || log "FAILED (exit status $rc)"
    exit "$rc"
}
# timeout(1) runs its command in a process group of its own; stop that whole group.
on_signal() {
    [[ -z $CHILD ]] || kill -TERM -- "-$CHILD" "$CHILD" 2>/dev/null
    log "interrupted"
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# One run at a time on a machine: runs share the daemon, the image tag and build/docker-wheels.
exec 9>/tmp/tinyllm-docker-smoke.lock
flock -w "$(limit 120)" 9 || die "another docker-smoke run holds /tmp/tinyllm-docker-smoke.lock"
LOCKED=1

[[ -f checkpoints/shakespeare/config.json && -f checkpoints/shakespeare/model.safetensors ]] \
    || die "no bundled checkpoint in checkpoints/shakespeare/ (the image ships it)"
# The bundled models: the checkpoints .dockerignore lets into the image, those that exist here.
BUNDLED=$(sed -n 's|^!checkpoints/\([^/]*\)$|\1|p' .dockerignore | while read -r name; do
    if [[ -f checkpoints/$name/config.json ]]; then echo "$name"; fi; done | paste -sd, -)
[[ -n $BASE_IMAGE && -n $TORCH_VERSION ]] || die "cannot read FROM from the Dockerfile or torch==VERSION from deploy/requirements/cpu.txt"
command -v python3 >/dev/null || die "python3 is needed to check the answers"

# --- 1. tools and daemon ---------------------------------------------------------------------------
# need COMMAND PACKAGE ...: apt-get installs the packages of the commands that are missing.
need() {
    local missing=()
    while (($#)); do
        command -v "$1" >/dev/null || missing+=("$2")
        shift 2
    done
    ((${#missing[@]})) || return 0
    ((EUID == 0)) || die "not root: cannot apt-get install ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    run_logged apt-update 180 apt-get -q update
    run_logged apt-install 300 apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=60 "${missing[@]}"
}
# debootstrap now too, if the base image will be needed: one apt-get run instead of two.
if command -v docker >/dev/null && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    need dockerd docker.io iptables iptables
else
    need dockerd docker.io iptables iptables debootstrap debootstrap
fi

# The Dockerfile needs BuildKit (RUN --mount). A CLI with the buildx plugin has it; so does Debian's
# docker.io 20.10 CLI with DOCKER_BUILDKIT=1. A newer CLI without buildx only has the legacy builder.
if docker buildx version >/dev/null 2>&1; then
    DOCKER=(docker)
elif [[ -x /usr/bin/docker ]]; then
    DOCKER=(/usr/bin/docker)
    export DOCKER_BUILDKIT=1
else
    die "no Docker CLI with BuildKit (install the buildx plugin)"
fi

if ! timeout 20 "${DOCKER[@]}" info >/dev/null 2>&1; then
    ((EUID == 0)) || die "no Docker daemon reachable, and not root to start one"
    log "starting dockerd"
    # Its own session: a Ctrl-C or a timeout on this script's process group does not reach it.
    setsid dockerd >"$STATE/dockerd.log" 2>&1 </dev/null &
    DOCKERD_PID=$!
    for _ in $(seq "$(limit 60)"); do
        timeout 5 "${DOCKER[@]}" info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -n 20 "$STATE/dockerd.log" >&2; die "dockerd exited"; }
        sleep 1
    done
    timeout 5 "${DOCKER[@]}" info >/dev/null 2>&1 || { tail -n 20 "$STATE/dockerd.log" >&2; die "dockerd did not come up"; }
fi
log "docker: $("${DOCKER[@]}" version --format 'client {{.Client.Version}}, server {{.Server.Version}}')"

# Leftovers of an interrupted run.
stale=$("${DOCKER[@]}" ps -aq --filter "label=$LABEL")
[[ -z $stale ]] || timeout 30 "${DOCKER[@]}" rm -f $stale >/dev/null

check_time
# --- 2. base image ---------------------------------------------------------------------------------
debian_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local m
    # deb822 stanzas (URIs: / Suites:), then one-line "deb [opts] URI SUITE ..." entries.
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v RS= '
        /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t\n]|$)/ && match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/) {
            u = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[ \t]*/, "", u); print u; exit }')
    [[ -n $m ]] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
    echo "${m:-http://deb.debian.org/debian}"
}

if "${DOCKER[@]}" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE: present"
else
    need debootstrap debootstrap
    mirror=$(debian_mirror)
    log "base image $BASE_IMAGE: debootstrap --variant=minbase bookworm from $mirror"
    rootfs=$STATE/rootfs
    run_logged debootstrap 360 debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
    # Slim it as Debian's -slim images are: no package caches, docs, man pages or locales.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
        >"$rootfs"/etc/dpkg/dpkg.cfg.d/docker-slim
    run_logged import 180 bash -o pipefail -c 'tar -C "$1" -c . | "$2" import \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "CMD [\"bash\"]" - "$3"' _ "$rootfs" "${DOCKER[0]}" "$BASE_IMAGE"
    awk -v d="$rootfs/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
    rm -rf --one-file-system "$rootfs"
fi

check_time
# --- 3. build --------------------------------------------------------------------------------------
build_args=()
# This machine's local CPU torch wheel, if pip finds one without the network (pip's find-links).
[[ -d build ]] || MADE_BUILD_DIR=1
rm -rf "$WHEEL_DIR"
mkdir -p "$WHEEL_DIR"
for pip in "python3 -m pip" ".venv/bin/python -m pip"; do
    timeout "$(limit 120)" $pip download --no-index --no-deps -q -d "$WHEEL_DIR" \
        --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_28_x86_64 "torch==$TORCH_VERSION" >/dev/null 2>&1 && break
done
shopt -s nullglob
wheels=("$WHEEL_DIR"/torch-*+cpu-*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
    log "torch: local wheel ${wheels[0]##*/}"
else
    rm -rf "$WHEEL_DIR"/*
    log "torch: no local CPU wheel; the build downloads torch==$TORCH_VERSION from PyTorch's CPU index"
fi
# Locally added CA certificates (e.g. a TLS-inspecting proxy's), for pip inside the build.
: >"$STATE/extra-ca.pem"
if [[ -d $CA_DIR ]]; then
    find "$CA_DIR" -type f -name '*.crt' -print0 | sort -z | xargs -0 -r cat >"$STATE/extra-ca.pem"
fi
if [[ -s $STATE/extra-ca.pem ]]; then
    build_args+=(--secret "id=extra_ca,src=$STATE/extra-ca.pem")
    log "extra CA certificates: $(grep -c 'BEGIN CERTIFICATE' "$STATE/extra-ca.pem") from $CA_DIR"
fi

old_id=$("${DOCKER[@]}" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "building $IMAGE"
build_start=$SECONDS
run_logged build 480 "${DOCKER[@]}" build --progress=plain "${build_args[@]}" -t "$IMAGE" .
awk '/^#[0-9]+ \[/ && !/\[internal\]/ { id = $1; sub(/^#[0-9]+ /, ""); step[id] = substr($0, 1, 88); next }
     ($1 in step) && /^#[0-9]+ (CACHED|DONE )/ {
         printf "    %-88s %s\n", step[$1], $2 == "CACHED" ? "cached" : $3; delete step[$1] }' \
    "$STATE/build.log" >&2
log "built in $((SECONDS - build_start))s ($(grep -c '^#[0-9]* CACHED' "$STATE/build.log") steps cached)"
new_id=$("${DOCKER[@]}" image inspect -f '{{.Id}}' "$IMAGE")
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    "${DOCKER[@]}" rmi "$old_id" >/dev/null 2>&1 || true # the previous build, now untagged
fi

# --- 4. run and check ------------------------------------------------------------------------------
# check.py URL TEXT_FILE MODELS: checks the answers. MODELS (comma-separated) must be exactly the models
# served; each must answer, and greedy twice alike. It writes each model's greedy text to TEXT_FILE, or, if
# that exists, checks only that the one model served says what the first container's first model said, and
# that a PNG heatmap renders (matplotlib needs a writable /tmp under a read-only root).
cat >"$STATE/check.py" <<'PY'
import json, os, sys, urllib.request

url, text_file, expected_models = sys.argv[1], sys.argv[2], sys.argv[3].split(",")

def get(path):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        assert r.status == 200, f"{path}: HTTP {r.status}"
        return json.load(r)

def post(path, body, raw=False):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200, f"{path}: HTTP {r.status}"
        return r.read() if raw else json.load(r)

models = [m["id"] for m in get("/v1/models")["data"]]
assert models == expected_models, f"/v1/models: {models}, expected {expected_models}"
print(f"    models: {', '.join(models)}", file=sys.stderr)

def generate(model):
    req = {"model": model, "prompt": "ROMEO:", "max_new_tokens": 20, "temperature": 0}
    g = post("/v1/generate", req)
    assert g.get("model") == model, f"generate: answered by {g.get('model')!r}, not {model!r}"
    assert isinstance(g.get("text"), str) and g["text"], f"generate: no text in {g}"
    tokens, finish = g.get("tokens"), g.get("finish_reason")
    assert isinstance(tokens, list) and 1 <= len(tokens) <= 20, f"generate: tokens {tokens}"
    assert isinstance(finish, str), f"generate: finish_reason {finish!r}"
    # a reply stops before a character that would not fit, so "length" may come up to 3 bytes early
    assert finish != "length" or 17 <= len(tokens) <= 20, f"generate: {len(tokens)} tokens, finish_reason 'length'"
    assert isinstance(g.get("usage"), dict), f"generate: usage {g.get('usage')}"
    return g

if os.path.exists(text_file):
    (model,) = models
    expected = json.load(open(text_file))["shakespeare"]
    g = generate(model)
    assert g["text"] == expected, f"generate: {g['text']!r}, but the first container said {expected!r}"
    print(f"    generate: {g['text']!r}, as the first container's shakespeare said", file=sys.stderr)
    png = post("/v1/attention", {"text": "To be", "layers": [0], "heads": [0], "format": "png"}, raw=True)
    assert png.startswith(b"\x89PNG"), f"attention: not a PNG: {png[:40]!r}"
    print(f"    attention: a {len(png)}-byte PNG heatmap", file=sys.stderr)
    sys.exit(0)

texts = {}
for model in models:
    step = get(f"/v1/model?model={model}")["decode_step"]
    assert step["native"] and step["batch_invariant"], f"{model}: not the native step: {step}"
    print(f"    {model}: {step['step']} in {step['weight_form']}, batch-invariant", file=sys.stderr)
    g = generate(model)
    again = generate(model)
    assert again["text"] == g["text"], f"generate ({model}): temperature 0 gave two different texts"
    texts[model] = g["text"]
    print(f"    {model}: generate: {g['text']!r} ({len(g['tokens'])} tokens, {g['finish_reason']}), the same twice",
          file=sys.stderr)

    a = post("/v1/attention", {"model": model, "text": "To be", "format": "json"})
    n, att = len(a["tokens"]), a["attention"]
    assert a["model"] == model, f"attention: answered by {a['model']!r}, not {model!r}"
    assert n >= 5, f"attention: {n} tokens for 5 bytes"
    assert len(att) == len(a["layers"]) >= 1, "attention: one map per layer"
    for layer in att:
        assert len(layer) == len(a["heads"]) >= 1, "attention: one map per head"
        for head in layer:
            assert len(head) == n and all(len(row) == n for row in head), "attention: maps are tokens x tokens"
            for q, row in enumerate(head):
                assert abs(sum(row) - 1) < 1e-2, f"attention: row {q} sums to {sum(row)}"
                assert all(abs(p) < 1e-6 for p in row[q + 1:]), f"attention: row {q} looks at later tokens"
    s = post("/v1/attention", {"model": model, "text": "Grüße, 世界", "format": "summary"})
    assert len(s["labels"]) == len(att) and len(s["metrics"]["previous_byte"][0]) == len(a["heads"]), "summary"
    print(f"    {model}: attention: {len(att)} layers x {len(a['heads'])} heads x {n}x{n}, causal, rows sum to 1; "
          f"summary labels {s['labels']}", file=sys.stderr)
json.dump(texts, open(text_file, "w"))
PY

show_logs() { "${DOCKER[@]}" logs --tail 40 "$CONTAINER" >&2 2>&1 || true; }

# serve PORT [docker run options]: starts $IMAGE published on 127.0.0.1 (a free port), sets CONTAINER
# and URL, waits for /health, then for Docker's own HEALTHCHECK.
serve() {
    local port=$1 started=$SECONDS health_deadline
    shift
    check_time
    CONTAINER=tinyllm-smoke-$$-$port
    # --health-interval only makes Docker run the image's own HEALTHCHECK command sooner.
    timeout 60 "${DOCKER[@]}" run -d --name "$CONTAINER" --label "$LABEL" -p "127.0.0.1::$port" \
        --health-interval 2s "$@" "$IMAGE" >/dev/null
    URL=http://127.0.0.1:$("${DOCKER[@]}" port "$CONTAINER" "$port/tcp" | head -n1 | sed 's/.*://')
    log "container $CONTAINER: port $port published on $URL"
    health_deadline=$((SECONDS + $(limit 180)))
    until python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=3)" \
            "$URL/health" 2>/dev/null; do
        [[ $("${DOCKER[@]}" inspect -f '{{.State.Running}}' "$CONTAINER") == true ]] \
            || { show_logs; die "the container exited before /health answered 200"; }
        ((SECONDS < health_deadline)) || { show_logs; die "/health did not answer 200 in $((SECONDS - started))s"; }
        sleep 1
    done
    log "/health: 200 after $((SECONDS - started))s"
    until [[ $("${DOCKER[@]}" inspect -f '{{.State.Health.Status}}' "$CONTAINER") == healthy ]]; do
        ((SECONDS < health_deadline)) || { show_logs; die "Docker's HEALTHCHECK never reported healthy"; }
        sleep 1
    done
    log "HEALTHCHECK: healthy"
}

# stop: SIGTERM must stop the server, cleanly, well before Docker's SIGKILL.
stop() {
    local started=$SECONDS exit_code
    timeout 60 "${DOCKER[@]}" stop -t 20 "$CONTAINER" >/dev/null
    exit_code=$("${DOCKER[@]}" inspect -f '{{.State.ExitCode}}' "$CONTAINER")
    [[ $exit_code == 0 ]] || { show_logs; die "the server exited with status $exit_code on SIGTERM"; }
    log "stopped cleanly on SIGTERM in $((SECONDS - started))s"
    timeout 30 "${DOCKER[@]}" rm "$CONTAINER" >/dev/null
    CONTAINER=
}

log "bundled checkpoints ($BUNDLED), default settings"
serve 8000
timeout "$(limit 120)" python3 "$STATE/check.py" "$URL" "$STATE/text" "$BUNDLED" || { show_logs; die "wrong answers"; }
stop

log "mounted checkpoint (a copy of the bundled one), TINYLLM_CHECKPOINT and TINYLLM_PORT set, read-only root"
cp -r checkpoints/shakespeare "$STATE/checkpoint"
chmod -R a+rX "$STATE/checkpoint" # the trainer writes weights 0600; the container's user is uid 10001
serve 9000 -v "$STATE/checkpoint:/checkpoint:ro" -e TINYLLM_CHECKPOINT=/checkpoint -e TINYLLM_PORT=9000 \
    --read-only --tmpfs /tmp
timeout "$(limit 120)" python3 "$STATE/check.py" "$URL" "$STATE/text" checkpoint || { show_logs; die "wrong answers"; }
stop

# --- 5. report -------------------------------------------------------------------------------------
size=$("${DOCKER[@]}" image inspect -f '{{.Size}}' "$IMAGE")
log "image $IMAGE: $((size / 1000000)) MB"
log "OK"

for next in "$@"; do
    log "running $next with this daemon and $IMAGE"
    # In the background so that a signal to this script is handled at once (see on_signal).
    TINYLLM_IMAGE=$IMAGE TINYLLM_DOCKER="${DOCKER[*]}" bash "$next" &
    CHILD=$!
    wait "$CHILD" || die "$next failed"
    CHILD=
done
