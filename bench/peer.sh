#!/bin/sh
# peer.sh: one measurement of a real client/server program (iperf3, sockperf, redis), driven by
# lab/bench/peers.py in one round trip: start the server in the background, wait until *it* listens,
# run the client, stop the server by its PID on every path.
#
#   peer.sh NAME FIRST_PORT LISTEN_WAIT CLIENT_LIMIT SERVER_COMMAND CLIENT_COMMAND
#
# NAME            the tool, for messages
# FIRST_PORT      the first port tried on 127.0.0.1; the first one nobody listens on is used
# LISTEN_WAIT     seconds the server gets to listen
# CLIENT_LIMIT    seconds the client gets to finish (a hang is a result to report, not to wait out)
# SERVER_COMMAND, CLIENT_COMMAND
#                 shell commands; they see $PORT (the chosen port) and $WORKDIR (a private
#                 directory, removed afterwards)
#
# The caller moves this shell into the cgroup under test first (lab.api.run_in): server and client
# are its children, so both sockets belong to that cgroup, which is what the redirect keys on.
#
# Output: the client's stdout and stderr; exit status the client's, or
#   124  the client did not finish within CLIENT_LIMIT
#   125  the server exited or did not listen within LISTEN_WAIT (its stderr follows)
# Lines this script writes itself start with "peer.sh:".
set -u

name=$1 first_port=$2 listen_wait=$3 client_limit=$4 server_command=$5 client_command=$6
server_pid=

say() { echo "peer.sh: $name: $*" >&2; }

server_tail() {
    tail -q -n 5 "$WORKDIR/server.err" "$WORKDIR/server.out" 2>/dev/null | grep -v '^[[:space:]]*$' |
        sed 's/^/peer.sh: server: /' >&2
}

stop_server() {
    [ -n "$server_pid" ] || return 0
    kill "$server_pid" 2>/dev/null
    # dash reaps its finished children between commands, so kill -0 fails once the server is gone.
    tries=0
    while kill -0 "$server_pid" 2>/dev/null && [ "$tries" -lt 50 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=
}

cleanup() {
    stop_server
    rm -rf "$WORKDIR"
}

listening() {
    # The listener must be our server, not whoever else may hold the port.
    ss -Hltnp "sport = :$PORT" 2>/dev/null | grep -q "pid=$server_pid,"
}

WORKDIR=$(mktemp -d /tmp/sockredir-peer.XXXXXX) || exit 1
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

PORT=$first_port
while ss -Hltn "sport = :$PORT" | grep -q .; do
    PORT=$((PORT + 1))
done
export PORT WORKDIR

sh -c "exec $server_command" >"$WORKDIR/server.out" 2>"$WORKDIR/server.err" </dev/null &
server_pid=$!

waited=0
until listening; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        server_pid=
        say "server exited before listening on 127.0.0.1:$PORT: $server_command"
        server_tail
        exit 125
    fi
    if [ "$waited" -ge "$((listen_wait * 10))" ]; then
        say "server did not listen on 127.0.0.1:$PORT within ${listen_wait}s: $server_command"
        server_tail
        exit 125
    fi
    sleep 0.1
    waited=$((waited + 1))
done

timeout -k 5 "$client_limit" sh -c "$client_command" </dev/null
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "client gave no result within ${client_limit}s: $client_command"
    server_tail
    exit 124
fi
if [ "$rc" -ne 0 ]; then
    server_tail
fi
exit "$rc"
