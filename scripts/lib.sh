# Shared helpers for aimesh's scripts. Source it; do not run it.
# shellcheck shell=bash

AIMESH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIMESH_ROOT

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run as root or through sudo, whichever this machine has.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root to run: $* (install it by hand, then re-run)"
    fi
}

# ensure_debs PKG... installs whichever of the Debian packages are missing.
ensure_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The C libraries aimesh links against.
ensure_build_deps() {
    command -v swift >/dev/null 2>&1 || die "swift is not on PATH; install Swift 6.3 (https://swift.org/install) first"
    ensure_debs libsodium-dev libcurl4-openssl-dev libsqlite3-dev pkg-config
}

# Release builds leave out the Swift runtime's exclusivity checks in every module (NIO's and Hummingbird's
# too), as those projects' authors build for benchmarks: 14,000 instructions a request less (4.6 %,
# callgrind). The test suite runs the debug build, where the checks stay on, so an overlapping access still
# fails it. Every release build here passes the same flags, so SwiftPM never rebuilds for a change of flags.
release_flags=(-Xswiftc -enforce-exclusivity=unchecked)

# build [debug|release] builds the aimesh executable and prints its path.
build() {
    local conf="${1:-debug}" flags=()
    [ "$conf" = release ] && flags=("${release_flags[@]}")
    say "building aimesh ($conf)"
    (cd "$AIMESH_ROOT" && swift build -c "$conf" --product aimesh "${flags[@]}" >&2) || die "build failed"
    echo "$AIMESH_ROOT/.build/$conf/aimesh"
}

# free_port prints a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

# wait_http URL [seconds] polls until URL answers 200.
wait_http() {
    local url="$1" limit="${2:-20}" i=0
    while [ "$i" -lt $((limit * 10)) ]; do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.1; i=$((i + 1))
    done
    die "$url did not answer within ${limit}s"
}

# wake_pingpong prints the path of scripts/lib/wake-pingpong.c built (once, into .build/cache; again when the
# source is newer), or fails without a C compiler. bench-wakeups and machine_wakeup run it.
wake_pingpong() {
    local tool="$AIMESH_ROOT/.build/cache/wake-pingpong" source="$AIMESH_ROOT/scripts/lib/wake-pingpong.c"
    command -v gcc >/dev/null || return 1
    if [ ! -x "$tool" ] || [ "$source" -nt "$tool" ]; then
        mkdir -p "$(dirname "$tool")"
        gcc -O2 -o "$tool" "$source" -lpthread >&2 || return 1
    fi
    echo "$tool"
}

# machine_wakeup prints what one wake-up of a thread on the other CPU costs right now, in µs (eventfd ping-pong
# between two threads pinned to CPUs 0 and 1, 3,000 round trips). On this VM it is the plainest sign of the
# hour: an idle vCPU halts, and waking it goes through the hypervisor, whose speed changes from hour to hour.
# The benchmarks print it before and after their runs so that figures from slow spells can be told apart.
# Never fails a benchmark: "-" on one CPU, without a C compiler, or where CPU 1 is out of reach (a cpuset).
machine_wakeup() {
    local tool out figure
    [ "$(nproc)" -gt 1 ] && tool="$(wake_pingpong)" || { echo "-"; return 0; }
    out="$("$tool" threads 0 1 3000 2>/dev/null)" || { echo "-"; return 0; }
    figure="$(sed -n 's/.*(\([0-9.]*\) us per wake-up).*/\1/p' <<<"$out")"
    echo "${figure:--}"
}

# write_bench_node FILE ID DATA_DIR API_PORT MOCK_PORT [GOSSIP_PORT [SERVER_EXTRA]] writes the benchmarks' serving
# node: the mock's m-fast as a local provider, warnings only; with GOSSIP_PORT the mesh is on and listens there;
# SERVER_EXTRA ("key: value") goes into its server section.
write_bench_node() {
    local file="$1" id="$2" data="$3" api="$4" mock="$5" gossip="${6:-}" server="${7:+, $7}" mesh=""
    [ -n "$gossip" ] && mesh=", mesh: { enabled: true, listen_addr: \"127.0.0.1:$gossip\" }"
    cat >"$file" <<YAML
node: { id: $id, data_dir: $data$mesh }
server: { listen_addr: "127.0.0.1:$api"$server }
providers:
  fast: { type: local, base_url: "http://127.0.0.1:$mock/v1", models: [ { name: m-fast, upstream_model: m-fast } ] }
observability: { logging: { level: warning } }
YAML
}

# write_chat_lua FILE writes a wrk script that POSTs a chat completion: $BENCH_BODY when set, else one
# small m-fast request.
write_chat_lua() {
    cat >"$1" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"m-fast","messages":[{"role":"user","content":"benchmark"}]}'
LUA
}

# start_two_hops BIN WORK [SERVING_ENV [ENTRY_ENV]] starts a 0 ms mock, a serving node (m-fast from the mock, mesh
# on) and an entry node that reaches it only through the mesh, each node under `env` with its ENV ("K=V K=V"),
# and waits until the entry node lists m-fast. Sets mock_port, serving_port, entry_port, serving_pid, entry_pid;
# adds the pids to the caller's `pids`.
start_two_hops() {
    local bin="$1" work="$2" serving_env="${3:-}" entry_env="${4:-}" gossip
    mock_port="$(free_port)"; "$bin" mock-upstream --listen "127.0.0.1:$mock_port" --name fast >/dev/null 2>&1 & pids+=($!)
    serving_port="$(free_port)" gossip="$(free_port)" entry_port="$(free_port)"
    write_bench_node "$work/serving.yaml" serving "$work/serving" "$serving_port" "$mock_port" "$gossip"
    # shellcheck disable=SC2086
    env $serving_env "$bin" node --config "$work/serving.yaml" >"$work/serving.log" 2>&1 & serving_pid=$!; pids+=($serving_pid)
    # shellcheck disable=SC2086
    env $entry_env "$bin" node --node-id entry --api-listen "127.0.0.1:$entry_port" --data-dir "$work/entry" \
        --gossip-listen "127.0.0.1:$(free_port)" --peers "127.0.0.1:$gossip" --log-level warning >"$work/entry.log" 2>&1 & entry_pid=$!; pids+=($entry_pid)
    wait_http "http://127.0.0.1:$mock_port/_mock/stats"
    wait_http "http://127.0.0.1:$serving_port/health"
    wait_http "http://127.0.0.1:$entry_port/health"
    local _
    for _ in $(seq 1 200); do curl -fsS "http://127.0.0.1:$entry_port/v1/models" | grep -q m-fast && return 0; sleep 0.05; done
    die "the entry node never listed m-fast (see $work/entry.log)"
}
