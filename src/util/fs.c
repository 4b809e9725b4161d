/* fs.c — filesystem helpers (see fs.h). */
#include "util/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/err.h"

char *fs_read_file(const char *path, size_t *len, alloy_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        alloy_fail(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n + 1 < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        alloy_fail(err, "%s: read failed", path);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int fs_write_file(const char *path, const void *data, size_t len, alloy_err *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return alloy_fail(err, "%s: %s", path, strerror(errno));
    size_t w = fwrite(data, 1, len, f);
    if (fclose(f) != 0 || w != len) return alloy_fail(err, "%s: write failed", path);
    return 0;
}

int fs_copy_file(const char *src, const char *dst, alloy_err *err) {
    size_t len;
    char *buf = fs_read_file(src, &len, err);
    if (!buf) return -1;
    int rc = fs_write_file(dst, buf, len, err);
    free(buf);
    return rc;
}

bool fs_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

bool fs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool fs_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

char *fs_join(const char *a, const char *b) {
    if (b[0] == '/' || !a[0]) return strdup(b);
    size_t la = strlen(a), lb = strlen(b);
    char *r = malloc(la + lb + 2);
    if (!r) return NULL;
    memcpy(r, a, la);
    size_t k = la;
    if (a[la - 1] != '/') r[k++] = '/';
    memcpy(r + k, b, lb + 1);
    return r;
}

char *fs_dirname(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int fs_mkdirs(const char *path, alloy_err *err) {
    char *p = strdup(path);
    if (!p) return alloy_fail(err, "out of memory");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            alloy_fail(err, "%s: %s", p, strerror(errno));
            free(p);
            return -1;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) rc = alloy_fail(err, "%s: %s", p, strerror(errno));
    free(p);
    return rc;
}

int fs_remove_tree(const char *path, alloy_err *err) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : alloy_fail(err, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return alloy_fail(err, "%s: %s", path, strerror(errno));
        struct dirent *e;
        int rc = 0;
        while (rc == 0 && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *child = fs_join(path, e->d_name);
            rc = child ? fs_remove_tree(child, err) : alloy_fail(err, "out of memory");
            free(child);
        }
        closedir(d);
        if (rc) return rc;
        if (rmdir(path) != 0) return alloy_fail(err, "%s: %s", path, strerror(errno));
        return 0;
    }
    if (unlink(path) != 0) return alloy_fail(err, "%s: %s", path, strerror(errno));
    return 0;
}

char *fs_make_temp_sibling(const char *final_path, alloy_err *err) {
    char *trimmed = strdup(final_path);
    if (!trimmed) return NULL;
    size_t n = strlen(trimmed);
    while (n > 1 && trimmed[n - 1] == '/') trimmed[--n] = 0;
    char *dir = fs_dirname(trimmed);
    const char *base = strrchr(trimmed, '/') ? strrchr(trimmed, '/') + 1 : trimmed;
    size_t len = strlen(dir) + strlen(base) + 32;
    char *tmpl = malloc(len);
    if (dir && tmpl) snprintf(tmpl, len, "%s/.%s.tmp-XXXXXX", dir, base);
    free(dir);
    free(trimmed);
    if (!tmpl) {
        alloy_fail(err, "out of memory");
        return NULL;
    }
    if (!mkdtemp(tmpl)) {
        alloy_fail(err, "%s: cannot create temporary directory: %s", final_path, strerror(errno));
        free(tmpl);
        return NULL;
    }
    return tmpl;
}

static void fsync_dir_of(const char *path) {
    char *dir = fs_dirname(path);
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

int fs_commit_dir(const char *tmp_dir, const char *final_path, alloy_err *err) {
    if (rename(tmp_dir, final_path) == 0) {
        fsync_dir_of(final_path);
        return 0;
    }
    if (errno != ENOTEMPTY && errno != EEXIST)
        return alloy_fail(err, "%s: cannot move output into place: %s", final_path, strerror(errno));
    /* Replace an existing directory: move it aside, move ours in, delete it. */
    size_t len = strlen(final_path) + 16;
    char *old = malloc(len);
    if (!old) return alloy_fail(err, "out of memory");
    snprintf(old, len, "%s.old-%ld", final_path, (long)getpid());
    int rc = 0;
    if (rename(final_path, old) != 0)
        rc = alloy_fail(err, "%s: cannot replace: %s", final_path, strerror(errno));
    else if (rename(tmp_dir, final_path) != 0) {
        rc = alloy_fail(err, "%s: cannot move output into place: %s", final_path, strerror(errno));
        rename(old, final_path);
    } else {
        fsync_dir_of(final_path);
        fs_remove_tree(old, NULL);
    }
    free(old);
    return rc;
}
