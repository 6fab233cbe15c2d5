#!/bin/sh
# The code patching that oopses a TCG guest ("Oops: int3", docs/lab.md): N times, a tracing instance
# sets a pid filter and clears it (registering and unregistering the scheduler's probes) while two
# processes wake each other on every vCPU. Without the two instances images/guest-init.sh holds from
# boot, every kernel here oopses within seconds; with them nothing is patched. PERSIST=1 makes the
# holders here (for a guest booted without them).
T=/sys/kernel/tracing
[ -d $T/instances ] || mount -t tracefs nodev $T
if [ "${PERSIST:-0}" = 1 ]; then
  for k in hold1 hold2; do mkdir -p $T/instances/$k; echo 1 > $T/instances/$k/set_event_pid; done
fi
python3 -c '
import os
r1, w1 = os.pipe(); r2, w2 = os.pipe()
if os.fork() == 0:
    while True: os.read(r1, 1); os.write(w2, b"x")
while True: os.write(w1, b"x"); os.read(r2, 1)
' &
PP=$!
i=0
while [ $i -lt "${N:-500}" ]; do
  mkdir $T/instances/p$i && echo $$ > $T/instances/p$i/set_event_pid && echo > $T/instances/p$i/set_event_pid
  rmdir $T/instances/p$i
  i=$((i+1))
done
pkill -P $PP; kill $PP
echo "done $i patch cycles"
