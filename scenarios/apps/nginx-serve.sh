#!/bin/sh
# nginx-serve.sh ROOT: the server half of the nginx check, run by bench/peer.sh (which sets $PORT
# and $WORKDIR): nginx.conf filled in for this run, then nginx itself in this process's place, so
# the PID peer.sh holds is nginx's.
#   -e: the error log nginx opens before it reads the configuration, kept out of /var/log too.
set -eu
root=$1
sed -e "s|@PORT@|$PORT|g" -e "s|@WORKDIR@|$WORKDIR|g" -e "s|@ROOT@|$root|g" \
    "$(dirname "$0")/nginx.conf" >"$WORKDIR/nginx.conf"
exec nginx -p "$WORKDIR" -e "$WORKDIR/nginx-error.log" -c "$WORKDIR/nginx.conf"
