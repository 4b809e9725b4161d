/* spin.h — how long idle OpenMP and OpenBLAS workers spin before they sleep.
 *
 * libgomp's workers spin up to 300000 rounds (milliseconds) at every
 * barrier and between parallel regions before sleeping. A merge runs a few
 * parallel regions per tensor with serial work between them, next to the
 * prefetch and writeback threads (merge/prefetch.h, the safetensors
 * writer's flusher): on a machine with as many cores as workers, the
 * spinning takes the core those threads need. OpenBLAS (the pthreads
 * build Debian links by default) starts its workers when it is loaded, and
 * each first spins on sched_yield for 2^28 cycles (about 0.1 s) before it
 * sleeps, whether or not a BLAS call ever comes: on the bench's two cores
 * a ties merge, which calls no BLAS, lost 0.10 CPU-s to it (perf: one
 * thread in sched_yield for the first 0.1 s of the merge). Both libraries
 * read these settings from the environment once, when they are loaded, so
 * a program that wants short ones must start again with them set. */
#ifndef ALLOY_UTIL_SPIN_H
#define ALLOY_UTIL_SPIN_H

/* Unless the user set GOMP_SPINCOUNT or OMP_WAIT_POLICY: set
 * GOMP_SPINCOUNT=10000 (~tens of microseconds) and, unless set,
 * OPENBLAS_THREAD_TIMEOUT=18 (2^18 cycles, ~0.1 ms: a BLAS worker stays
 * awake between the calls of one SVD, and sleeps soon after the last; a
 * drm merge with rank 64 on the bench took 32.9 s of wall and 56.9 CPU-s
 * with 18, 35.7 / 66.1 with 28, the default, 36.3 / 60.7 with 4, medians
 * of 4 alternating runs), and re-execute this program
 * (/proc/self/exe) with argv; returns only when that is not possible, the
 * program then runs on with the libraries' defaults. */
void alloy_short_spin(char **argv);

#endif
