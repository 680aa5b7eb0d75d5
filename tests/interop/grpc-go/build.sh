#!/usr/bin/env bash
# Builds the grpc-go interop server offline from Debian's packages:
#   apt-get install -y golang-go golang-google-grpc-dev
# Output: target/interop/grpc-go-echo (never committed). Usage: build.sh [output path]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$repo/target/interop/grpc-go-echo}"
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/google.golang.org/grpc ]; then
  echo "grpc-go interop server: Go or grpc-go missing; install them with" >&2
  echo "  apt-get install -y golang-go golang-google-grpc-dev" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
# Debian installs Go libraries as a GOPATH tree; build in GOPATH mode, no network.
export GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOPROXY=off
export GOCACHE="${GOCACHE:-${HOME:-/tmp}/.cache/go-build}"
# Rebuild only when the source changed.
if [ -x "$out" ] && [ "$out" -nt "$here/main.go" ]; then
  exit 0
fi
cd "$here"
go build -o "$out" main.go
