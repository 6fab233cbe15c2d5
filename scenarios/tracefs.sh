#!/bin/sh
# Trace control for the scenarios, run on the target (host or guest); driven by lab/scenario/trace.py.
#
#   tracefs.sh probe GROUP/EVENT... [kprobe:FUNCTION]
#       one line per question: "tracefs PATH", "event GROUP/EVENT yes|no",
#       "kprobe FUNCTION yes|no REASON"
#   tracefs.sh start TAG PORT SPEC...
#       set up one private tracefs instance per SPEC and print the path of a control file that
#       lists them; scenarios find it in SOCKREDIR_TRACE_CONTROL. Counting is always on: the
#       scenario reads the counts at the edges of its data phase, so instances can serve many runs.
#   tracefs.sh stop TAG
#       remove what start TAG set up (idempotent).
#   tracefs.sh cleanup
#       remove every instance and kprobe the lab ever left behind (a killed run); only when no
#       suite is running on this machine.
#       SPEC is GROUP/EVENT:FILTER or kprobe:FUNCTION, FILTER one of
#         dev       net device name starts with TAG (the scenario renames its loopbacks TAG...)
#         port      TCP source or destination port is PORT (the scenario's server port)
#         pid       only the process tree that writes its PID into set_event_pid (event-fork)
#         pid-inet  pid, and only AF_INET/AF_INET6 sockets
#       a kprobe is always "pid".
#
# Tracepoints are global; private instances (instances/<name>) keep their own buffers, filters and
# on/off switch, so concurrent runs never disturb each other or the global trace. One instance per
# event lets the per-CPU stats (entries + overrun) count that event exactly, however small the buffer.
set -eu

RUN_DIR=/run/sockredir-lab
PRIVATE_MOUNT=$RUN_DIR/tracefs

tracefs_dir() {
    found=$(awk '$3 == "tracefs" { print $2; exit }' /proc/self/mounts)
    if [ -n "$found" ]; then
        echo "$found"
        return
    fi
    mkdir -p "$PRIVATE_MOUNT"
    mount -t tracefs sockredir-tracefs "$PRIVATE_MOUNT"
    echo "$PRIVATE_MOUNT"
}

probe() {
    tfs=$(tracefs_dir)
    echo "tracefs $tfs"
    for item in "$@"; do
        case "$item" in
        kprobe:*)
            fn=${item#kprobe:}
            if [ ! -w "$tfs/kprobe_events" ]; then
                echo "kprobe $fn no kernel built without kprobes (no kprobe_events in tracefs)"
            elif ! grep -q "^$fn\( \|\$\)" "$tfs/available_filter_functions" 2>/dev/null; then
                echo "kprobe $fn no $fn is not in available_filter_functions (inlined or absent)"
            else
                echo "kprobe $fn yes"
            fi
            ;;
        *)
            if [ -d "$tfs/events/$item" ]; then echo "event $item yes"; else echo "event $item no"; fi
            ;;
        esac
    done
}

# setup TFS TAG PORT CONTROL SPEC...: one instance per spec, listed in CONTROL
setup() {
    tfs=$1 tag=$2 port=$3 control=$4
    shift 4
    : > "$control"
    for spec in "$@"; do
        case "$spec" in
        kprobe:*)
            fn=${spec#kprobe:}
            group=sockredir_$tag
            echo "p:$group/$fn $fn" >> "$tfs/kprobe_events"
            echo "$group/$fn" >> "$control.kprobes"
            event=$group/$fn name=kprobe:$fn filter=pid
            ;;
        *)
            event=${spec%%:*} name=$event filter=${spec#*:}
            ;;
        esac
        inst=$tfs/instances/sockredir-$tag-${event##*/}
        mkdir "$inst"
        echo 0 > "$inst/tracing_on"
        echo 64 > "$inst/buffer_size_kb"
        mode=all
        case "$filter" in
        dev) echo "name ~ \"$tag*\"" > "$inst/events/$event/filter" ;;
        port) echo "sport == $port || dport == $port" > "$inst/events/$event/filter" ;;
        pid|pid-inet)
            mode=pid
            echo 1 > "$inst/options/event-fork"
            if [ "$filter" = pid-inet ]; then
                echo "family == 2 || family == 10" > "$inst/events/$event/filter"
            fi
            ;;
        *) echo "tracefs.sh: unknown filter $filter in $spec" >&2; return 2 ;;
        esac
        echo 1 > "$inst/events/$event/enable"
        echo 1 > "$inst/tracing_on"
        echo "$name $inst $mode" >> "$control"
    done
}

teardown() {
    tfs=$1 control=$2
    if [ -f "$control" ]; then
        while read -r name inst mode; do
            echo 0 > "$inst/tracing_on" 2>/dev/null || true
            echo 0 > "$inst/events/enable" 2>/dev/null || true
            rmdir "$inst" 2>/dev/null || echo "tracefs.sh: could not remove $inst" >&2
        done < "$control"
    fi
    if [ -f "$control.kprobes" ]; then
        while read -r event; do
            echo "-:$event" >> "$tfs/kprobe_events" 2>/dev/null || echo "tracefs.sh: could not remove kprobe $event" >&2
        done < "$control.kprobes"
    fi
    rm -f "$control" "$control.kprobes"
}

control_of() {
    mkdir -p "$RUN_DIR/trace"
    echo "$RUN_DIR/trace/$1.ctl"
}

start() {
    tag=$1 port=$2
    shift 2
    tfs=$(tracefs_dir)
    control=$(control_of "$tag")
    # On a failure half-way, remove what was made; on success leave it for stop.
    trap 'teardown "$tfs" "$control"' EXIT
    trap 'exit 130' INT TERM
    setup "$tfs" "$tag" "$port" "$control" "$@"
    trap - EXIT
    echo "$control"
}

stop() {
    teardown "$(tracefs_dir)" "$(control_of "$1")"
}

cleanup() {
    tfs=$(tracefs_dir)
    for inst in "$tfs"/instances/sockredir-*; do
        [ -d "$inst" ] || continue
        echo 0 > "$inst/events/enable" 2>/dev/null || true
        rmdir "$inst" && echo "removed $inst"
    done
    if [ -f "$tfs/kprobe_events" ]; then
        grep '^p:sockredir_' "$tfs/kprobe_events" | while read -r definition _; do
            echo "-:${definition#p:}" >> "$tfs/kprobe_events" && echo "removed kprobe ${definition#p:}"
        done
    fi
    rm -f "$RUN_DIR"/trace/*.ctl "$RUN_DIR"/trace/*.ctl.kprobes
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
probe) probe "$@" ;;
start) start "$@" ;;
stop) stop "$@" ;;
cleanup) cleanup ;;
*) echo "usage: tracefs.sh probe EVENT... | start TAG PORT SPEC... | stop TAG | run TAG PORT SPEC... -- COMMAND... | cleanup" >&2
   exit 2 ;;
esac
