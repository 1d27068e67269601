/* knoway: process set-up shared by both binaries. */
#ifndef KNOWAY_PROC_H
#define KNOWAY_PROC_H

#include <stdint.h>

/* Raise the soft limit on open files to the hard limit (each connection holds a
 * descriptor; a proxied request two). Returns the soft limit now in force (1024 when it
 * cannot be read). Call at start, before threads open descriptors. */
uint64_t kw_raise_nofile(void);

#endif
