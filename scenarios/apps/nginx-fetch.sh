#!/bin/sh
# nginx-fetch.sh FILE MAX_TIME RATE: the client half of the nginx check, run by bench/peer.sh ($PORT,
# $WORKDIR): curl fetches FILE twice in one invocation, so the second transfer reuses the first's
# keep-alive connection, then once more on a new connection reading at most RATE bytes a second (a
# slow reader: nginx's send buffer fills and it waits for write space, where a lost EPOLLOUT
# stalls it); then what lab/conformance/apps.py judges, in sections ("### NAME"):
#   curl        one line per transfer: HTTP status, bytes, new connections, local port
#   curl-exit   the first non-zero exit status of the two curls, else 0 (28: MAX_TIME ran out)
#   bodies      sha256sum of the three response bodies
#   access-log  nginx's view: connection number, request number on it, status, body bytes
#   error-log   what nginx logged at warn or worse
# Exit status: curl's.
set -u
file=$1 max_time=$2 rate=$3
url="http://127.0.0.1:$PORT/$file"
format='transfer %{http_code} %{size_download} %{num_connects} %{local_port}\n'
echo "### curl"
curl -sS --max-time "$max_time" -o "$WORKDIR/body1" -o "$WORKDIR/body2" -w "$format" "$url" "$url"
rc=$?
curl -sS --max-time "$max_time" --limit-rate "$rate" -o "$WORKDIR/body3" -w "$format" "$url"
slow=$?
[ "$rc" -ne 0 ] || rc=$slow
echo "### curl-exit"
echo "$rc"
echo "### bodies"
sha256sum "$WORKDIR/body1" "$WORKDIR/body2" "$WORKDIR/body3" 2>&1
echo "### access-log"
cat "$WORKDIR/access.log" 2>&1
echo "### error-log"
cat "$WORKDIR/nginx-error.log" 2>&1
exit "$rc"
