// SPDX-License-Identifier: GPL-2.0
/*
 * key_padding_holes.bpf.c unchanged; only the loader differs (key_padding_holes_capbpf.toml:
 * capabilities = bpf, net_admin). Without CAP_PERFMON the verifier does not allow reads of
 * uninitialised stack, so the holes that a root loader gets away with become an error.
 */
#include "key_padding_holes.bpf.c"
