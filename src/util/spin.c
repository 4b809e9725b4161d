/* spin.c — short OpenMP and OpenBLAS spin times for the merge (see spin.h). */
#include "util/spin.h"

#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

void alloy_short_spin(char **argv) {
    if (getenv("GOMP_SPINCOUNT") || getenv("OMP_WAIT_POLICY")) return;
    bool blas = !getenv("OPENBLAS_THREAD_TIMEOUT");
    if (setenv("GOMP_SPINCOUNT", "10000", 1)) return;
    if (blas && setenv("OPENBLAS_THREAD_TIMEOUT", "18", 1)) blas = false;
    execv("/proc/self/exe", argv);
    /* not re-executed: do not pass them on to children either */
    unsetenv("GOMP_SPINCOUNT");
    if (blas) unsetenv("OPENBLAS_THREAD_TIMEOUT");
}
