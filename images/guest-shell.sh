# The frame of every command the host runs on a guest (lab/vm/target.py, SSHTarget). The host keeps
# a few long-lived shells on the guest (the login shell, as sshd would start it), sends each this
# file once, then one `lab_run` line per command. An SSH session per command costs ~0.12 s in a TCG
# guest (sshd forks, bash starts); a command through a kept shell costs a fork: ~0.01 s, plus the
# command's own exec.
#
# lab_run TOKEN COMMAND: run COMMAND in a subshell, so that its `exit`, `cd` or `export` cannot touch
# this shell, without this function's arguments, and with stdin from /dev/null, because this
# shell's stdin carries the host's next commands. A subshell shares this shell's $$, so a command
# that reads its own process ID (`echo $$ > cgroup.procs; exec ...`) gets a shell of its own.
# Then end stdout with "TOKEN STATUS" and stderr with "TOKEN", each on its own line; the host cuts
# the output at its token (random per command, so no output can forge it).
lab_run() {
    case $2 in
    *'$$'* | *'${$}'* | *PPID*) "${SHELL:-/bin/sh}" -c "$2" ;;
    *) ( eval "shift 2; $2" ) ;;
    esac </dev/null
    printf '%s %d\n' "$1" "$?"
    printf '%s\n' "$1" >&2
}
