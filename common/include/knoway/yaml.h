/* knoway: YAML (libyaml) to kw_node, multi-document, with line/column marks. */
#ifndef KNOWAY_YAML_H
#define KNOWAY_YAML_H

#include <stddef.h>

#include "arena.h"
#include "diag.h"
#include "node.h"

/* Parse every document of buf into *docs (an arena array of *ndocs roots; empty documents
 * are skipped). Plain scalars follow the YAML 1.2 core schema (null, bool, int, float,
 * else string); quoted scalars are strings. Anchors and aliases are refused (they let a
 * small file expand without bound). Syntax errors go to diag as file:line:col.
 * Returns KW_OK or KW_ERROR. */
int kw_yaml_parse(struct kw_arena *a, const char *file, const char *buf, size_t len,
                  struct kw_node ***docs, size_t *ndocs, struct kw_diag *diag);

#endif
