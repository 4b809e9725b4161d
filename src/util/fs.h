/* fs.h — small filesystem helpers: whole-file reads, paths, directories,
 * atomic output directories. POSIX only. */
#ifndef ALLOY_UTIL_FS_H
#define ALLOY_UTIL_FS_H

#include <stdbool.h>
#include <stddef.h>

#include "alloy.h"

/* Read a whole file into a NUL-terminated malloc'd buffer (*len excludes the
 * NUL; len may be NULL). Returns NULL with err set on failure. */
char *fs_read_file(const char *path, size_t *len, alloy_err *err);
/* Write a whole file (created or truncated). */
int fs_write_file(const char *path, const void *data, size_t len, alloy_err *err);
/* Copy a regular file. */
int fs_copy_file(const char *src, const char *dst, alloy_err *err);

bool fs_exists(const char *path);
bool fs_is_dir(const char *path);
bool fs_is_file(const char *path);

/* malloc'd "a/b" (b unchanged when absolute). */
char *fs_join(const char *a, const char *b);
/* malloc'd directory part of path ("." when none). */
char *fs_dirname(const char *path);

/* mkdir -p. */
int fs_mkdirs(const char *path, alloy_err *err);
/* rm -rf; missing path is not an error. */
int fs_remove_tree(const char *path, alloy_err *err);

/* Create a fresh empty directory next to final_path, named
 * "<dir>/.<base>.tmp-XXXXXX"; returns it malloc'd, NULL on failure. */
char *fs_make_temp_sibling(const char *final_path, alloy_err *err);
/* Move a completed temp directory into place. If final_path exists it must be
 * a directory; it is replaced (renamed aside, then removed). fsyncs the
 * parent so the rename is durable. */
int fs_commit_dir(const char *tmp_dir, const char *final_path, alloy_err *err);

#endif
