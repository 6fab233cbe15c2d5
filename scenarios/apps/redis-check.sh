#!/bin/sh
# redis-check.sh REQUESTS KEYS LIMIT: the client half of the redis check, run by bench/peer.sh
# ($PORT, $WORKDIR) against a fresh redis-server. Every tool gets LIMIT seconds. Sections ("### NAME")
# for lab/conformance/apps.py:
#   benchmark        redis-benchmark --csv: REQUESTS SETs and GETs of 256 bytes, 16 per pipeline
#   benchmark-exit   its exit status
#   commandstats     INFO commandstats: the server's count of what it executed (every request?)
#   pipe             redis-cli --pipe writing KEYS known values (64 random hex digits) in database 1
#   dbsize           keys in database 1 afterwards
#   values           sha256 and line count of the values written
#   readback         sha256 and line count of one MGET of all KEYS keys, one value a line
# Exit status: redis-benchmark's (peer.sh then shows the server's last words).
set -u
requests=$1 keys=$2 limit=$3
cli() { timeout "$limit" redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }

echo "### benchmark"
timeout "$limit" redis-benchmark -h 127.0.0.1 -p "$PORT" -t set,get -P 16 -n "$requests" -d 256 --csv
benchmark_rc=$?
echo "### benchmark-exit"
echo "$benchmark_rc"
echo "### commandstats"
cli INFO commandstats

head -c "$((keys * 32))" /dev/urandom | od -An -v -tx1 -w32 | tr -d ' ' >"$WORKDIR/values"
echo "### pipe"
awk '{ printf "SET k:%d %s\r\n", NR, $0 }' "$WORKDIR/values" | cli -n 1 --pipe 2>&1
echo "### dbsize"
cli -n 1 DBSIZE
# One MGET with every key: the reply (KEYS x 64 bytes) crosses the connection in one piece.
set -- $(awk '{ printf "k:%d\n", NR }' "$WORKDIR/values")
cli -n 1 --raw MGET "$@" >"$WORKDIR/readback"
echo "### values"
echo "$(sha256sum <"$WORKDIR/values" | cut -d' ' -f1) $(wc -l <"$WORKDIR/values")"
echo "### readback"
echo "$(sha256sum <"$WORKDIR/readback" | cut -d' ' -f1) $(wc -l <"$WORKDIR/readback")"
exit "$benchmark_rc"
