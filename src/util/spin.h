/* spin.h — how long an idle OpenMP worker spins before it sleeps.
 *
 * libgomp's workers spin up to 300000 rounds (milliseconds) at every
 * barrier and between parallel regions before sleeping. A merge runs a few
 * parallel regions per tensor with serial work between them, next to the
 * prefetch and writeback threads (merge/prefetch.h, the safetensors
 * writer's flusher): on a machine with as many cores as workers, the
 * spinning takes the core those threads need. libgomp reads its spin count
 * from the environment once, when it is loaded, so a program that wants a
 * short one must start again with GOMP_SPINCOUNT set. */
#ifndef ALLOY_UTIL_SPIN_H
#define ALLOY_UTIL_SPIN_H

/* Unless the user set GOMP_SPINCOUNT or OMP_WAIT_POLICY: set
 * GOMP_SPINCOUNT=10000 (~tens of microseconds) and re-execute this program
 * (/proc/self/exe) with argv; returns only when that is not possible, the
 * program then runs on with libgomp's default. */
void alloy_short_spin(char **argv);

#endif
