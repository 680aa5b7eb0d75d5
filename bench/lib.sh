# Shared by the bench/ scripts: `source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"` after
# setting BENCH (the name in log lines). Sourcing it makes $WORK (a scratch folder) and
# installs the exit trap that stops every pid in PIDS and removes $WORK; on failure the tail
# of every $WORK/*.log is printed first.

log() { printf '[%s] %s\n' "${BENCH:-bench}" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-${BENCH//\//-}.XXXXXX")
PIDS=()
AT_EXIT=() # commands the exit trap runs first (e.g. to undo a change to a running service)
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for command in "${AT_EXIT[@]}"; do eval "$command" || true; done
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in {1..50}; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ $status -ne 0 ]]; then
    for f in "$WORK"/*.log; do
      [[ -s $f ]] && { log "--- tail of $f"; tail -n 20 "$f" >&2; }
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# True when something accepts connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A base port with $1 consecutive free ports after it.
free_ports() {
  local count=$1 base i ephemeral=32768
  # Below the ephemeral range: a port some client socket (or one in TIME_WAIT after a
  # benchmark's thousands of connections) holds cannot be listened on.
  [[ -r /proc/sys/net/ipv4/ip_local_port_range ]] &&
    read -r ephemeral _ </proc/sys/net/ipv4/ip_local_port_range
  for _ in {1..50}; do
    base=$((10000 + RANDOM % (ephemeral - 10000 - count)))
    for ((i = 0; i < count; i++)); do listening $((base + i)) && continue 2; done
    echo "$base"
    return
  done
  die "no $count free consecutive ports found"
}

# wait_for SECONDS PID DESCRIPTION COMMAND...: polls COMMAND until it succeeds; fails early
# when PID has exited.
wait_for() {
  local seconds=$1 pid=$2 what=$3
  shift 3
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || die "$what exited during start-up"
    ((SECONDS < deadline)) || die "$what not ready after ${seconds}s"
    sleep 0.1
  done
}

# CPU time (clock ticks of 1/100 s, user + system) used so far by the given processes.
cpu_ticks() {
  local total=0 pid stat
  for pid in "$@"; do
    stat=$(<"/proc/$pid/stat")
    read -r -a fields <<<"${stat##*) }" # fields after the command name, from field 3
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

# Resident memory of a process, in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# field NAME KEY: a value from the `key=value` result line in $WORK/NAME.out.
field() { tr ' ' '\n' <"$WORK/$1.out" | sed -n "s/^$2=//p"; }

# shop_config CONFIG BASE: prints CONFIG (a switchboard.yaml for the demo shop) with the
# shop's ports 50051..50055 moved to BASE..BASE+4.
shop_config() {
  local i sed_ports=()
  for ((i = 0; i < 5; i++)); do sed_ports+=(-e "s/:$((50051 + i))\\b/:$(($2 + i))/g"); done
  sed -E "${sed_ports[@]}" "$1"
}

# median VALUES...: the middle value (the lower of the two middle ones for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Sets PRIORITY (a command prefix) and PRIORITY_NAME from RT and NICE: RT=1 (root) runs what
# is measured under SCHED_RR, so that other work on a shared machine cannot delay a single
# wake-up; otherwise at niceness NICE (default -10 as root, which gives it most of the CPU
# against default-priority builds).
set_priority() {
  RT=${RT:-0}
  NICE=${NICE:-$([[ $EUID -eq 0 ]] && echo -10 || echo 0)}
  if [[ ${RT:-0} == 1 ]]; then
    [[ $EUID -eq 0 ]] || die "RT=1 needs root (chrt --rr)"
    PRIORITY=(chrt --rr 1)
    PRIORITY_NAME="SCHED_RR 1"
  else
    PRIORITY=(nice -n "$NICE")
    PRIORITY_NAME="nice $NICE"
  fi
}
