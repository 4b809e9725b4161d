/* spin.c — a short OpenMP spin count for the merge (see spin.h). */
#include "util/spin.h"

#include <stdlib.h>
#include <unistd.h>

void alloy_short_spin(char **argv) {
    if (getenv("GOMP_SPINCOUNT") || getenv("OMP_WAIT_POLICY")) return;
    if (setenv("GOMP_SPINCOUNT", "10000", 1)) return;
    execv("/proc/self/exe", argv);
    unsetenv("GOMP_SPINCOUNT"); /* not re-executed: do not pass it on to children either */
}
