#!/bin/sh
# nginx-fetch.sh FILE MAX_TIME: the client half of the nginx check, run by bench/peer.sh ($PORT,
# $WORKDIR): curl fetches FILE twice in one invocation, so the second transfer reuses the first's
# keep-alive connection; then what lab/conformance/apps.py judges, in sections ("### NAME"):
#   curl        one line per transfer: HTTP status, bytes, new connections, local port
#   curl-exit   curl's exit status (28: MAX_TIME ran out)
#   bodies      sha256sum of both response bodies
#   access-log  nginx's view: connection number, request number on it, status, body bytes
#   error-log   what nginx logged at warn or worse
# Exit status: curl's.
set -u
file=$1 max_time=$2
url="http://127.0.0.1:$PORT/$file"
echo "### curl"
curl -sS --max-time "$max_time" -o "$WORKDIR/body1" -o "$WORKDIR/body2" \
    -w 'transfer %{http_code} %{size_download} %{num_connects} %{local_port}\n' "$url" "$url"
rc=$?
echo "### curl-exit"
echo "$rc"
echo "### bodies"
sha256sum "$WORKDIR/body1" "$WORKDIR/body2" 2>&1
echo "### access-log"
cat "$WORKDIR/access.log" 2>&1
echo "### error-log"
cat "$WORKDIR/nginx-error.log" 2>&1
exit "$rc"
