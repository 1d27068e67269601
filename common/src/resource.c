/* Decoding and validation of resources, and their canonical encoding.
 *
 * Each decode_* function reads one map: it first reports unknown fields (with a "did you
 * mean" hint), then reads each known field through a typed getter that pushes the
 * field's name onto d->path, so every error carries its place. Errors never stop the
 * decoder: everything is checked and every problem reported. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include <openssl/evp.h>

#include "decode.h"
#include "knoway/duration.h"
#include "knoway/net.h"
#include "knoway/kw.h"
#include "knoway/provider.h"
#include "knoway/redis_contract.h"

/* ---- names ------------------------------------------------------------------------- */

const char *kw_kind_name(enum kw_kind k)
{
    switch (k) {
    case KW_KIND_LLMBACKEND:
        return "LLMBackend";
    case KW_KIND_LLMROUTE:
        return "LLMRoute";
    case KW_KIND_SECRET:
        return "Secret";
    case KW_KIND_DATAPLANE:
        return "DataPlane";
    case KW_KIND_LLMCONSUMER:
        return "LLMConsumer";
    }
    return "?";
}

void kw_period_name(enum kw_period p, long long now, char *name, size_t len, int64_t *end_ms)
{
    time_t t = (time_t)now;
    struct tm tm;
    gmtime_r(&t, &tm);
    struct tm e = tm;
    e.tm_hour = e.tm_min = e.tm_sec = 0;
    if (p == KW_PERIOD_DAY) {
        strftime(name, len, "%Y-%m-%d", &tm);
        e.tm_mday++;
    } else if (p == KW_PERIOD_WEEK) {
        strftime(name, len, "%G-W%V", &tm);
        e.tm_mday += 7 - (tm.tm_wday + 6) % 7; /* the next Monday */
    } else {
        strftime(name, len, "%Y-%m", &tm);
        e.tm_mday = 1;
        e.tm_mon++;
    }
    *end_ms = (int64_t)timegm(&e) * 1000;
}

void kw_usd_format(int64_t nano, char *buf, size_t len)
{
    if (nano < 0)
        nano = 0;
    int n = snprintf(buf, len, "%lld.%06lld", (long long)(nano / 1000000000),
                     (long long)(nano / 1000 % 1000000));
    while (n > 3 && (size_t)n < len && buf[n - 1] == '0' && buf[n - 3] != '.')
        buf[--n] = '\0';
}

void kw_dataplane_defaults(struct kw_dataplane *dp)
{
    memset(dp, 0, sizeof(*dp));
    dp->meta.name = "default";
    dp->meta.ns = "default";
    dp->listen = KW_DEFAULT_LISTEN;
    dp->admin = KW_DEFAULT_ADMIN;
    dp->debug_from = kw_cidr_loopback;
    dp->ndebug_from = KW_ARRAY_LEN(kw_cidr_loopback);
    dp->limits.max_body_bytes = KW_DEFAULT_MAX_BODY_BYTES;
    dp->limits.max_connections = KW_DEFAULT_MAX_CONNECTIONS;
    dp->limits.max_memory_bytes = KW_DEFAULT_MAX_MEMORY_BYTES;
    dp->limits.max_connections_per_client = KW_DEFAULT_MAX_CONNS_PER_CLIENT;
    dp->limits.read_timeout_ms = KW_DEFAULT_READ_TIMEOUT_MS;
    dp->redis.timeout_ms = KW_DEFAULT_REDIS_TIMEOUT_MS;
    dp->usage.dir = KW_DEFAULT_USAGE_DIR;
    dp->usage.max_bytes = KW_DEFAULT_USAGE_MAX_BYTES;
    dp->usage.sync_interval_ms = KW_DEFAULT_USAGE_SYNC_MS;
    dp->telemetry.sample_ratio = 1.0;
    dp->auth.max_failures = KW_DEFAULT_AUTH_MAX_FAILURES;
    dp->auth.failure_window_ms = KW_DEFAULT_AUTH_FAILURE_WINDOW_MS;
    dp->telemetry.timeout_ms = 5000;
}

int kw_route_age_cmp(const struct kw_route *x, const struct kw_route *y)
{
    const struct kw_meta *a = &x->meta, *b = &y->meta;
    const char *ta = a->creation_timestamp != NULL ? a->creation_timestamp : "";
    const char *tb = b->creation_timestamp != NULL ? b->creation_timestamp : "";
    int r = strcmp(ta, tb);
    if (r != 0)
        return r;
    /* the position counts only without a creation time (documents of a file, entries of
     * a snapshot, both in age order): API objects are added in the informer's hash order,
     * and two replicas with the same objects must agree on the order and the version */
    if (ta[0] == '\0' && a->order != b->order)
        return a->order < b->order ? -1 : 1;
    r = strcmp(a->ns, b->ns);
    return r != 0 ? r : strcmp(a->name, b->name);
}

int kw_route_ptr_age_cmp(const void *a, const void *b)
{
    return kw_route_age_cmp(*(struct kw_route *const *)a, *(struct kw_route *const *)b);
}

const struct kw_secret_item *kw_secret_get(const struct kw_secret *s, const char *key)
{
    for (size_t i = 0; i < s->nitems; i++)
        if (strcmp(s->items[i].key, key) == 0)
            return &s->items[i];
    return NULL;
}

/* ---- paths, errors, hints ---------------------------------------------------------- */

void kw_dec_error(struct kw_dec *d, const struct kw_node *n, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    unsigned line = 0, col = 0;
    if (d->file != NULL && n != NULL) {
        line = n->line;
        col = n->col;
    }
    kw_diag_add(d->diag, d->file, line, col, d->object, d->path, "%s", msg);
    d->errors++;
}

/* Append to the path, cut at its size (every field of every object passes here: a
 * controller decodes 10,000 objects per build, so no printf). */
static void path_add(struct kw_dec *d, const char *s, size_t n)
{
    size_t room = sizeof(d->path) - 1 - d->plen;
    if (n > room)
        n = room;
    memcpy(d->path + d->plen, s, n);
    d->plen += n;
    d->path[d->plen] = '\0';
}

static size_t push(struct kw_dec *d, const char *field)
{
    size_t mark = d->plen;
    if (d->plen > 0)
        path_add(d, ".", 1);
    path_add(d, field, strlen(field));
    return mark;
}

static size_t push_index(struct kw_dec *d, size_t i)
{
    size_t mark = d->plen;
    char digits[24], *p = digits + sizeof(digits);
    *--p = ']';
    do
        *--p = (char)('0' + i % 10);
    while ((i /= 10) > 0);
    *--p = '[';
    path_add(d, p, (size_t)(digits + sizeof(digits) - p));
    return mark;
}

static void pop(struct kw_dec *d, size_t mark)
{
    d->plen = mark;
    d->path[mark] = '\0';
}

unsigned kw_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    unsigned row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        unsigned diag = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned up = row[j];
            unsigned cost =
                tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1]) ? 0 : 1;
            unsigned best = diag + cost;
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The closest candidate within a distance that still looks like a typo, or NULL. */
static const char *suggest(const char *word, const char *const *cands)
{
    const char *best = NULL;
    unsigned best_d = 99;
    size_t wl = strlen(word);
    unsigned limit = wl <= 3 ? 1 : wl <= 8 ? 2 : 3;
    for (; *cands != NULL; cands++) {
        unsigned dd = kw_edit_distance(word, *cands);
        if (dd < best_d) {
            best_d = dd;
            best = *cands;
        }
    }
    return best_d <= limit ? best : NULL;
}

/* Fields kept by the API server that a file may carry (kubectl get -o yaml): accepted and
 * ignored. */
static const char *const ignored_meta[] = {
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    NULL,
};

static bool in_list(const char *s, size_t len, const char *const *list)
{
    for (; *list != NULL; list++)
        if (strlen(*list) == len && memcmp(*list, s, len) == 0)
            return true;
    return false;
}

static kw_fields_hook_fn fields_hook;
static void *fields_hook_ud;

void kw_decode_set_fields_hook(kw_fields_hook_fn fn, void *ud)
{
    fields_hook = fn;
    fields_hook_ud = ud;
}

/* Report every key of m not in known (or in also_ok). m must be a map. */
static void check_fields(struct kw_dec *d, const struct kw_node *m, const char *const *known,
                         const char *const *also_ok)
{
    if (fields_hook != NULL)
        fields_hook(fields_hook_ud, d->path, known);
    if (!d->strict)
        return;
    for (size_t i = 0; i < m->n; i++) {
        const struct kw_node *k = m->pairs[i].key;
        if (in_list(k->str, k->len, known) || (also_ok != NULL && in_list(k->str, k->len, also_ok)))
            continue;
        const char *hint = suggest(k->str, known);
        size_t mark = push(d, k->str);
        if (hint != NULL)
            kw_dec_error(d, k, "unknown field \"%.100s\" (did you mean \"%s\"?)", k->str, hint);
        else
            kw_dec_error(d, k, "unknown field \"%.100s\"", k->str);
        pop(d, mark);
    }
}

/* "a string", "an integer", ... */
static const char *a_type(enum kw_node_type t)
{
    switch (t) {
    case KW_NODE_NULL:
        return "null";
    case KW_NODE_BOOL:
        return "a boolean";
    case KW_NODE_INT:
        return "an integer";
    case KW_NODE_FLOAT:
        return "a number";
    case KW_NODE_STRING:
        return "a string";
    case KW_NODE_MAP:
        return "a map";
    case KW_NODE_SEQ:
        return "a list";
    }
    return "a value";
}

/* ---- typed getters ------------------------------------------------------------------ */
/* Each looks up key in map m, pushes its name on the path, checks the type and range,
 * and returns the node (NULL when absent or wrong). */

static const struct kw_node *want(struct kw_dec *d, const struct kw_node *m, const char *key,
                                  enum kw_node_type t, bool required, size_t *mark)
{
    const struct kw_node *n = kw_node_get(m, key);
    *mark = push(d, key);
    if (n == NULL || n->type == KW_NODE_NULL) {
        if (required)
            kw_dec_error(d, n != NULL ? n : m, "required field is missing");
        return NULL;
    }
    if (n->type != t && !(t == KW_NODE_FLOAT && n->type == KW_NODE_INT)) {
        kw_dec_error(d, n, "must be %s, not %s", a_type(t), a_type(n->type));
        return NULL;
    }
    return n;
}

static bool has_ctl(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    return false;
}

static const char *get_string(struct kw_dec *d, const struct kw_node *m, const char *key,
                              bool required, size_t maxlen, const struct kw_node **where)
{
    size_t mark;
    const struct kw_node *n = want(d, m, key, KW_NODE_STRING, required, &mark);
    const char *out = NULL;
    if (where != NULL)
        *where = n != NULL ? n : m;
    if (n != NULL) {
        if (n->len == 0)
            kw_dec_error(d, n, "must not be empty");
        else if (n->len > maxlen)
            kw_dec_error(d, n, "must be at most %zu bytes long", maxlen);
        else if (strlen(n->str) != n->len || has_ctl(n->str, n->len))
            kw_dec_error(d, n, "must not contain control characters");
        else
            out = kw_arena_strndup(d->a, n->str, n->len);
    }
    pop(d, mark);
    return out;
}

static bool get_int(struct kw_dec *d, const struct kw_node *m, const char *key, int64_t min,
                    int64_t max, int64_t *out)
{
    size_t mark;
    const struct kw_node *n = kw_node_get(m, key);
    bool ok = false;
    mark = push(d, key);
    if (n != NULL && n->type != KW_NODE_NULL) {
        if (n->type != KW_NODE_INT)
            kw_dec_error(d, n, "must be an integer, not %s", a_type(n->type));
        else if (n->i < min || n->i > max)
            kw_dec_error(d, n, "must be %lld..%lld, got %lld", (long long)min, (long long)max,
                         (long long)n->i);
        else {
            *out = n->i;
            ok = true;
        }
    }
    pop(d, mark);
    return ok;
}

static void get_u32(struct kw_dec *d, const struct kw_node *m, const char *key, uint32_t min,
                    uint32_t max, uint32_t *out)
{
    int64_t v;
    if (get_int(d, m, key, min, max, &v))
        *out = (uint32_t)v;
}

static void get_bool(struct kw_dec *d, const struct kw_node *m, const char *key, bool *out)
{
    size_t mark;
    const struct kw_node *n = want(d, m, key, KW_NODE_BOOL, false, &mark);
    if (n != NULL)
        *out = n->b;
    pop(d, mark);
}

static void get_duration(struct kw_dec *d, const struct kw_node *m, const char *key, int64_t min_ms,
                         int64_t max_ms, int64_t *out)
{
    size_t mark;
    const struct kw_node *n = kw_node_get(m, key);
    mark = push(d, key);
    if (n != NULL && n->type != KW_NODE_NULL) {
        char err[160], lo[32], hi[32];
        int64_t ms;
        if (n->type != KW_NODE_STRING)
            kw_dec_error(d, n, "must be a duration string like \"30s\", not %s", a_type(n->type));
        else if (kw_duration_parse(n->str, n->len, &ms, err, sizeof(err)) != KW_OK)
            kw_dec_error(d, n, "%s", err);
        else if (ms < min_ms || ms > max_ms) {
            kw_duration_format(min_ms, lo, sizeof(lo));
            kw_duration_format(max_ms, hi, sizeof(hi));
            kw_dec_error(d, n, "must be between %s and %s", lo, hi);
        } else
            *out = ms;
    }
    pop(d, mark);
}

static const struct kw_node *get_map(struct kw_dec *d, const struct kw_node *m, const char *key,
                                     bool required, size_t *mark)
{
    return want(d, m, key, KW_NODE_MAP, required, mark);
}

static const struct kw_node *get_seq(struct kw_dec *d, const struct kw_node *m, const char *key,
                                     bool required, size_t max_items, size_t *mark)
{
    const struct kw_node *n = want(d, m, key, KW_NODE_SEQ, required, mark);
    if (n == NULL)
        return NULL;
    if (required && n->n == 0) {
        kw_dec_error(d, n, "must have at least one item");
        return NULL;
    }
    if (n->n > max_items) {
        kw_dec_error(d, n, "must have at most %zu items", max_items);
        return NULL;
    }
    return n;
}

/* Item i of a sequence as a map, with "[i]" pushed; NULL (and an error) otherwise. */
static const struct kw_node *item_map(struct kw_dec *d, const struct kw_node *seq, size_t i,
                                      size_t *mark)
{
    *mark = push_index(d, i);
    const struct kw_node *n = seq->items[i];
    if (n->type != KW_NODE_MAP) {
        kw_dec_error(d, n, "must be a map, not %s", a_type(n->type));
        return NULL;
    }
    return n;
}

/* ---- value checks -------------------------------------------------------------------- */

bool kw_valid_dns_label(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > KW_MAX_NAMESPACE_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && !(c == '-' && i > 0 && i + 1 < len))
            return false;
    }
    return true;
}

bool kw_valid_dns_subdomain(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > KW_MAX_NAME_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (alnum)
            continue;
        if ((c == '-' || c == '.') && i > 0 && i + 1 < len && s[i - 1] != '.' &&
            !(c == '.' && s[i - 1] == '-') && !(s[i + 1] == '.' && c == '-'))
            continue;
        return false;
    }
    return true;
}

/* http(s)://host[:port][/path], no query, fragment, user info or white space. */
static const char *url_problem(const char *u)
{
    const char *rest;
    if (strncmp(u, "http://", 7) == 0)
        rest = u + 7;
    else if (strncmp(u, "https://", 8) == 0)
        rest = u + 8;
    else
        return "must start with http:// or https://";
    size_t hostlen = strcspn(rest, "/");
    if (hostlen == 0 || rest[0] == ':')
        return "has no host";
    for (const char *p = u; *p != '\0'; p++) {
        if (*p == ' ' || *p == '\t')
            return "must not contain white space";
        if (*p == '?' || *p == '#')
            return "must not have a query or fragment";
    }
    if (memchr(rest, '@', hostlen) != NULL)
        return "must not carry user info (use credentials)";
    const char *colon = NULL;
    if (rest[0] == '[') {
        const char *close = memchr(rest, ']', hostlen);
        if (close == NULL)
            return "has an unterminated IPv6 address";
        if (close + 1 < rest + hostlen)
            colon = close[1] == ':' ? close + 1 : (const char *)"";
    } else {
        colon = memchr(rest, ':', hostlen);
    }
    if (colon != NULL) {
        if (*colon != ':')
            return "has an invalid port";
        size_t plen = (size_t)(rest + hostlen - colon - 1);
        if (plen == 0 || plen > 5 || strspn(colon + 1, "0123456789") != plen)
            return "has an invalid port";
        long port = strtol(colon + 1, NULL, 10);
        if (port < 1 || port > 65535)
            return "has a port outside 1..65535";
    }
    return NULL;
}

static const char *get_url(struct kw_dec *d, const struct kw_node *m, const char *key,
                           bool required)
{
    const struct kw_node *where;
    const char *u = get_string(d, m, key, required, KW_MAX_URL_LEN, &where);
    if (u == NULL)
        return NULL;
    const char *problem = url_problem(u);
    if (problem != NULL) {
        size_t mark = push(d, key);
        kw_dec_error(d, where, "\"%.200s\" %s", u, problem);
        pop(d, mark);
        return NULL;
    }
    return u;
}

/* "host:port", "[v6]:port" or ":port" */
static const char *address_problem(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL)
        return "must be host:port";
    if (s[0] == '[' && (colon == s || colon[-1] != ']'))
        return "must be [IPv6]:port";
    if (s[0] != '[' && memchr(s, ':', (size_t)(colon - s)) != NULL)
        return "must put an IPv6 address in brackets: [::1]:8080";
    size_t plen = strlen(colon + 1);
    if (plen == 0 || plen > 5 || strspn(colon + 1, "0123456789") != plen)
        return "has an invalid port";
    long port = strtol(colon + 1, NULL, 10);
    if (port < 1 || port > 65535)
        return "has a port outside 1..65535";
    return NULL;
}

static const char *get_address(struct kw_dec *d, const struct kw_node *m, const char *key)
{
    const struct kw_node *where;
    const char *s = get_string(d, m, key, false, 300, &where);
    if (s == NULL)
        return NULL;
    const char *problem = address_problem(s);
    if (problem != NULL) {
        size_t mark = push(d, key);
        kw_dec_error(d, where, "\"%.200s\" %s", s, problem);
        pop(d, mark);
        return NULL;
    }
    return s;
}

static bool is_token(const char *s)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    for (; *s != '\0'; s++)
        if (!isalnum((unsigned char)*s) && strchr(extra, *s) == NULL)
            return false;
    return true;
}

/* ---- pieces ------------------------------------------------------------------------- */

static void decode_secret_ref(struct kw_dec *d, const struct kw_node *m, const char *key,
                              struct kw_secret_ref *ref, const char *default_key)
{
    static const char *const fields[] = {"name", "key", NULL};
    size_t mark;
    const struct kw_node *n = get_map(d, m, key, false, &mark);
    if (n != NULL) {
        check_fields(d, n, fields, NULL);
        const struct kw_node *where;
        ref->name = get_string(d, n, "name", true, KW_MAX_NAME_LEN, &where);
        ref->line = where->line;
        ref->col = where->col;
        if (ref->name != NULL && !kw_valid_dns_subdomain(ref->name)) {
            size_t m2 = push(d, "name");
            kw_dec_error(d, where, "\"%s\" is not a valid Secret name", ref->name);
            pop(d, m2);
        }
        ref->key = get_string(d, n, "key", default_key == NULL, KW_MAX_NAME_LEN, NULL);
        if (ref->key == NULL)
            ref->key = default_key;
    }
    pop(d, mark);
}

static struct kw_header *decode_headers(struct kw_dec *d, const struct kw_node *m, const char *key,
                                        size_t *count, bool for_upstream)
{
    static const char *const fields[] = {"name", "value", NULL};
    static const char *const reserved[] = {
        "host", "content-length", "transfer-encoding", "connection",       "upgrade",
        "te",   "trailer",        "keep-alive",        "proxy-connection", NULL};
    size_t mark;
    struct kw_header *out = NULL;
    *count = 0;
    const struct kw_node *seq = get_seq(d, m, key, false, KW_MAX_MATCH_ITEMS, &mark);
    if (seq != NULL && seq->n > 0)
        out = kw_arena_alloc(d->a, seq->n * sizeof(*out));
    for (size_t i = 0; out != NULL && i < seq->n; i++) {
        size_t im;
        const struct kw_node *h = item_map(d, seq, i, &im);
        if (h != NULL) {
            check_fields(d, h, fields, NULL);
            const struct kw_node *where;
            const char *name = get_string(d, h, "name", true, KW_MAX_HEADER_NAME, &where);
            const char *value = get_string(d, h, "value", true, KW_MAX_HEADER_VALUE, NULL);
            size_t nm = push(d, "name");
            if (name != NULL && !is_token(name))
                kw_dec_error(d, where, "\"%.100s\" is not a valid header name", name);
            else if (name != NULL && for_upstream) {
                char lower[KW_MAX_HEADER_NAME + 1];
                size_t j = 0;
                for (; name[j] != '\0'; j++)
                    lower[j] = (char)tolower((unsigned char)name[j]);
                lower[j] = '\0';
                if (in_list(lower, j, reserved))
                    kw_dec_error(d, where, "\"%s\" is managed by the gateway and cannot be set",
                                 name);
            }
            pop(d, nm);
            for (size_t j = 0; name != NULL && j < *count; j++)
                if (strcasecmp(out[j].name, name) == 0) {
                    nm = push(d, "name");
                    kw_dec_error(d, where, "header \"%s\" is listed twice", name);
                    pop(d, nm);
                }
            if (name != NULL && value != NULL) {
                out[*count].name = name;
                out[*count].value = value;
                (*count)++;
            }
        }
        pop(d, im);
    }
    pop(d, mark);
    return out;
}

static bool get_enum(struct kw_dec *d, const struct kw_node *m, const char *key,
                     const char *const *names, size_t count, int *out);

static void decode_upstream(struct kw_dec *d, const struct kw_node *spec, struct kw_backend *b)
{
    static const char *const fields[] = {"baseURL",  "serviceRef", "endpoints",
                                         "protocol", "timeout",    "connectTimeout",
                                         "headers",  "tls",        NULL};
    static const char *const protocols[] = {"HTTP/1.1", "HTTP/2", NULL};
    static const char *const sref_fields[] = {"name", "port", NULL};
    static const char *const ep_fields[] = {"url", "weight", NULL};
    static const char *const tls_fields[] = {"insecureSkipVerify", "caSecretRef", NULL};
    struct kw_upstream *u = &b->upstream;
    u->connect_timeout_ms = KW_DEFAULT_CONNECT_TIMEOUT_MS;
    size_t mark;
    const struct kw_node *m = get_map(d, spec, "upstream", false, &mark);
    if (m == NULL) {
        pop(d, mark);
        return;
    }
    check_fields(d, m, fields, NULL);
    int given = 0;
    u->base_url = get_url(d, m, "baseURL", false);
    given += kw_node_get(m, "baseURL") != NULL;

    size_t sm;
    const struct kw_node *sref = get_map(d, m, "serviceRef", false, &sm);
    if (sref != NULL) {
        given++;
        check_fields(d, sref, sref_fields, NULL);
        const struct kw_node *where;
        u->service_ref.name = get_string(d, sref, "name", true, KW_MAX_NAMESPACE_LEN, &where);
        if (u->service_ref.name != NULL && !kw_valid_dns_label(u->service_ref.name)) {
            size_t nm = push(d, "name");
            kw_dec_error(d, where, "\"%s\" is not a valid Service name", u->service_ref.name);
            pop(d, nm);
            u->service_ref.name = NULL;
        }
        int64_t port = 0;
        if (kw_node_get(sref, "port") == NULL) {
            size_t pm = push(d, "port");
            kw_dec_error(d, sref, "required field is missing");
            pop(d, pm);
        }
        if (get_int(d, sref, "port", 1, 65535, &port))
            u->service_ref.port = (uint32_t)port;
        if (d->snapshot) {
            kw_dec_error(d, sref, "a snapshot carries resolved endpoints, not a serviceRef");
        }
    }
    pop(d, sm);

    size_t em;
    const struct kw_node *eps = get_seq(d, m, "endpoints", false, KW_MAX_ENDPOINTS, &em);
    if (eps != NULL) {
        given++;
        if (eps->n == 0)
            kw_dec_error(d, eps, "must have at least one item");
        else
            u->endpoints = kw_arena_alloc(d->a, eps->n * sizeof(*u->endpoints));
        for (size_t i = 0; u->endpoints != NULL && i < eps->n; i++) {
            size_t im;
            const struct kw_node *e = item_map(d, eps, i, &im);
            if (e != NULL) {
                check_fields(d, e, ep_fields, NULL);
                struct kw_endpoint *ep = &u->endpoints[u->nendpoints];
                ep->weight = 1;
                ep->url = get_url(d, e, "url", true);
                get_u32(d, e, "weight", 0, KW_MAX_WEIGHT, &ep->weight);
                if (ep->url != NULL)
                    u->nendpoints++;
            }
            pop(d, im);
        }
    }
    pop(d, em);

    if (given > 1)
        kw_dec_error(d, m, "set exactly one of baseURL, serviceRef and endpoints");
    int proto = 0;
    if (kw_node_get(m, "protocol") != NULL && get_enum(d, m, "protocol", protocols, 2, &proto))
        u->http2 = proto == 1;
    get_duration(d, m, "timeout", 1, 24 * 3600000LL, &u->timeout_ms);
    get_duration(d, m, "connectTimeout", 1, 300000, &u->connect_timeout_ms);
    u->headers = decode_headers(d, m, "headers", &u->nheaders, true);

    size_t tm;
    const struct kw_node *tls = get_map(d, m, "tls", false, &tm);
    if (tls != NULL) {
        check_fields(d, tls, tls_fields, NULL);
        get_bool(d, tls, "insecureSkipVerify", &u->tls.insecure_skip_verify);
        decode_secret_ref(d, tls, "caSecretRef", &u->tls.ca_secret_ref, "ca.crt");
    }
    pop(d, tm);
    pop(d, mark);
}

/* A required Google Cloud project ID or location: lower-case letters, digits and '-'. */
static const char *get_gcp_name(struct kw_dec *d, const struct kw_node *m, const char *key,
                                const char *what)
{
    const struct kw_node *where;
    const char *v = get_string(d, m, key, true, 64, &where);
    for (const char *p = v; p != NULL && *p != '\0'; p++)
        if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-') {
            size_t km = push(d, key);
            kw_dec_error(d, where, "\"%s\" is not %s", v, what);
            pop(d, km);
            return NULL;
        }
    return v;
}

static void decode_credentials(struct kw_dec *d, const struct kw_node *spec, struct kw_backend *b)
{
    static const char *const fields[] = {"secretRef", "azure", "bedrock", "vertex", NULL};
    static const char *const azure_fields[] = {"apiVersion", "deployment", NULL};
    static const char *const vertex_fields[] = {"project", "region", NULL};
    static const char *const bedrock_fields[] = {"region", "accessKeyIdKey", "secretAccessKeyKey",
                                                 "sessionTokenKey", NULL};
    struct kw_credentials *c = &b->credentials;
    size_t mark;
    const struct kw_node *m = get_map(d, spec, "credentials", false, &mark);
    if (m != NULL) {
        b->has_credentials = true;
        check_fields(d, m, fields, NULL);
        bool bedrock = b->provider == KW_PROVIDER_AWS_BEDROCK;
        bool vertex = b->provider == KW_PROVIDER_VERTEX_AI;
        decode_secret_ref(d, m, "secretRef", &c->secret_ref,
                          bedrock  ? ""
                          : vertex ? "credentials.json"
                                   : "apiKey");
        if (bedrock && c->secret_ref.key != NULL && c->secret_ref.key[0] != '\0') {
            size_t km = push(d, "secretRef.key");
            kw_dec_error(d, kw_node_get(m, "secretRef"),
                         "not used by AWSBedrock; set credentials.bedrock.accessKeyIdKey and "
                         "secretAccessKeyKey");
            pop(d, km);
        }
        if (bedrock)
            c->secret_ref.key = NULL;

        size_t am;
        const struct kw_node *az = get_map(d, m, "azure", false, &am);
        if (az != NULL) {
            if (b->provider != KW_PROVIDER_AZURE_OPENAI)
                kw_dec_error(d, az, "only for provider AzureOpenAI");
            check_fields(d, az, azure_fields, NULL);
            c->azure.api_version = get_string(d, az, "apiVersion", false, 64, NULL);
            c->azure.deployment = get_string(d, az, "deployment", false, KW_MAX_MODEL_LEN, NULL);
        }
        pop(d, am);

        size_t bm;
        const struct kw_node *br = get_map(d, m, "bedrock", false, &bm);
        if (br != NULL) {
            if (!bedrock)
                kw_dec_error(d, br, "only for provider AWSBedrock");
            check_fields(d, br, bedrock_fields, NULL);
            const struct kw_node *where;
            c->bedrock.region = get_string(d, br, "region", true, 64, &where);
            if (c->bedrock.region != NULL) {
                for (const char *p = c->bedrock.region; *p != '\0'; p++)
                    if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) && *p != '-') {
                        size_t rm = push(d, "region");
                        kw_dec_error(d, where, "\"%s\" is not an AWS region like us-east-1",
                                     c->bedrock.region);
                        pop(d, rm);
                        c->bedrock.region = NULL;
                        break;
                    }
            }
            c->bedrock.access_key_id_key =
                get_string(d, br, "accessKeyIdKey", false, KW_MAX_NAME_LEN, NULL);
            c->bedrock.secret_access_key_key =
                get_string(d, br, "secretAccessKeyKey", false, KW_MAX_NAME_LEN, NULL);
            c->bedrock.session_token_key =
                get_string(d, br, "sessionTokenKey", false, KW_MAX_NAME_LEN, NULL);
        }
        pop(d, bm);
        size_t vm;
        const struct kw_node *vx = get_map(d, m, "vertex", false, &vm);
        if (vx != NULL) {
            if (!vertex)
                kw_dec_error(d, vx, "only for provider VertexAI");
            check_fields(d, vx, vertex_fields, NULL);
            c->vertex.project = get_gcp_name(d, vx, "project", "a Google Cloud project ID");
            c->vertex.region =
                get_gcp_name(d, vx, "region", "a Google Cloud location like us-central1");
        }
        pop(d, vm);
        if (vertex && vx == NULL) {
            size_t rm = push(d, "vertex");
            kw_dec_error(d, m, "required for provider VertexAI (project and region)");
            pop(d, rm);
        }
        if (vertex && c->secret_ref.name == NULL && kw_node_get(m, "secretRef") == NULL) {
            size_t rm = push(d, "secretRef");
            kw_dec_error(d, m,
                         "required field is missing (a Secret holding a service-account key "
                         "or an access token)");
            pop(d, rm);
        }
        if (bedrock && br == NULL) {
            size_t rm = push(d, "bedrock");
            kw_dec_error(d, m, "required for provider AWSBedrock (region and key names)");
            pop(d, rm);
        }
        if (bedrock && c->secret_ref.name == NULL && kw_node_get(m, "secretRef") == NULL) {
            size_t rm = push(d, "secretRef");
            kw_dec_error(d, m, "required field is missing");
            pop(d, rm);
        }
    }
    pop(d, mark);
    if (b->provider == KW_PROVIDER_AZURE_OPENAI && c->azure.api_version == NULL)
        c->azure.api_version = "2024-10-21";
    if (b->provider == KW_PROVIDER_AWS_BEDROCK) {
        if (c->bedrock.access_key_id_key == NULL)
            c->bedrock.access_key_id_key = "AWS_ACCESS_KEY_ID";
        if (c->bedrock.secret_access_key_key == NULL)
            c->bedrock.secret_access_key_key = "AWS_SECRET_ACCESS_KEY";
    }
}

/* The gateway owns these body fields; params may not touch them. */
static const char *const managed_body_fields[] = {"model", "stream", NULL};

static struct kw_node *decode_param_map(struct kw_dec *d, const struct kw_node *m, const char *key)
{
    size_t mark;
    const struct kw_node *n = get_map(d, m, key, false, &mark);
    struct kw_node *out = NULL;
    if (n != NULL) {
        for (size_t i = 0; i < n->n; i++) {
            const struct kw_node *k = n->pairs[i].key;
            if (in_list(k->str, k->len, managed_body_fields)) {
                size_t km = push(d, k->str);
                kw_dec_error(d, k, "\"%s\" is set by the gateway%s", k->str,
                             k->str[0] == 'm' ? " (use spec.modelName)" : "");
                pop(d, km);
            }
        }
        out = kw_node_clone(d->a, n);
    }
    pop(d, mark);
    return out;
}

static void decode_params(struct kw_dec *d, const struct kw_node *spec, struct kw_params *p)
{
    static const char *const fields[] = {"defaults", "overrides", "remove", NULL};
    size_t mark;
    const struct kw_node *m = get_map(d, spec, "params", false, &mark);
    if (m != NULL) {
        check_fields(d, m, fields, NULL);
        p->defaults = decode_param_map(d, m, "defaults");
        p->overrides = decode_param_map(d, m, "overrides");
        size_t rm;
        const struct kw_node *rem = get_seq(d, m, "remove", false, KW_MAX_MATCH_ITEMS, &rm);
        if (rem != NULL && rem->n > 0)
            p->remove = kw_arena_alloc(d->a, rem->n * sizeof(*p->remove));
        for (size_t i = 0; p->remove != NULL && i < rem->n; i++) {
            size_t im = push_index(d, i);
            const struct kw_node *s = rem->items[i];
            if (s->type != KW_NODE_STRING || s->len == 0 || strlen(s->str) != s->len)
                kw_dec_error(d, s, "must be a non-empty string");
            else if (in_list(s->str, s->len, managed_body_fields))
                kw_dec_error(d, s, "\"%s\" is set by the gateway and cannot be removed", s->str);
            else {
                bool dup = false;
                for (size_t j = 0; j < p->nremove; j++)
                    dup |= strcmp(p->remove[j], s->str) == 0;
                if (dup)
                    kw_dec_error(d, s, "\"%s\" is listed twice", s->str);
                else
                    p->remove[p->nremove++] = kw_arena_strndup(d->a, s->str, s->len);
            }
            pop(d, im);
        }
        pop(d, rm);
    }
    pop(d, mark);
}

static bool get_enum(struct kw_dec *d, const struct kw_node *m, const char *key,
                     const char *const *names, size_t count, int *out)
{
    const struct kw_node *where;
    const char *s = get_string(d, m, key, true, 64, &where);
    if (s == NULL)
        return false;
    for (size_t i = 0; i < count; i++)
        if (names[i] != NULL && strcmp(s, names[i]) == 0) {
            *out = (int)i;
            return true;
        }
    char list[512] = "";
    size_t o = 0;
    for (size_t i = 0; i < count && o < sizeof(list); i++)
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i > 0 ? ", " : "", names[i]);
    const char *const *cands = names;
    const char *hint = suggest(s, cands);
    size_t mark = push(d, key);
    if (hint != NULL)
        kw_dec_error(d, where, "unknown value \"%.64s\" (did you mean \"%s\"?); one of: %s", s,
                     hint, list);
    else
        kw_dec_error(d, where, "unknown value \"%.64s\"; one of: %s", s, list);
    pop(d, mark);
    return false;
}

static bool get_money(struct kw_dec *d, const struct kw_node *m, const char *key, bool required,
                      int64_t max_units, int64_t *out);

/* spec.circuitBreaker and spec.limits (docs/configuration.md, "Traffic management"). */
static void decode_backend_traffic(struct kw_dec *d, const struct kw_node *spec,
                                   struct kw_backend *b)
{
    static const char *const cb_fields[] = {"consecutiveFailures", "ejectionTime",
                                            "maxEjectionPercent", NULL};
    static const char *const lim_fields[] = {"requestsPerMinute", "tokensPerMinute",
                                             "maxConcurrentRequests", NULL};
    /* on by default: a dead backend or endpoint is left out after a few failures */
    b->circuit_breaker.consecutive_failures = KW_DEFAULT_CONSECUTIVE_FAILURES;
    b->circuit_breaker.ejection_time_ms = KW_DEFAULT_EJECTION_TIME_MS;
    b->circuit_breaker.max_ejection_percent = KW_DEFAULT_MAX_EJECTION_PERCENT;
    size_t mark;
    const struct kw_node *m = get_map(d, spec, "circuitBreaker", false, &mark);
    if (m != NULL) {
        check_fields(d, m, cb_fields, NULL);
        get_u32(d, m, "consecutiveFailures", 0, 1000, &b->circuit_breaker.consecutive_failures);
        get_duration(d, m, "ejectionTime", 100, 3600000, &b->circuit_breaker.ejection_time_ms);
        get_u32(d, m, "maxEjectionPercent", 1, 100, &b->circuit_breaker.max_ejection_percent);
    }
    pop(d, mark);
    m = get_map(d, spec, "limits", false, &mark);
    if (m != NULL) {
        check_fields(d, m, lim_fields, NULL);
        get_u32(d, m, "requestsPerMinute", 1, 100000000, &b->limits.requests_per_minute);
        get_u32(d, m, "tokensPerMinute", 1, 2000000000, &b->limits.tokens_per_minute);
        get_u32(d, m, "maxConcurrentRequests", 1, 1000000, &b->limits.max_concurrent_requests);
    }
    pop(d, mark);
}

void kw_decode_backend_spec(struct kw_dec *d, const struct kw_node *spec, struct kw_backend *b)
{
    static const char *const fields[] = {
        "provider", "modelName", "upstream",  "credentials",       "params", "circuitBreaker",
        "limits",   "pricing",   "reasoning", "structuredOutputs", NULL};
    static const char *const structured[] = {"Tool", "Native", NULL};
    static const char *const reasoning_fields[] = {"content", NULL};
    static const char *const reasoning_content[] = {"Include", "Omit", NULL};
    static const char *const pricing_fields[] = {"inputPerMillion", "outputPerMillion",
                                                 "cachedInputPerMillion", NULL};
    const char *provider_list[KW_PROVIDER__COUNT + 1];
    for (int p = 0; p < KW_PROVIDER__COUNT; p++)
        provider_list[p] = kw_provider_name((enum kw_provider)p);
    provider_list[KW_PROVIDER__COUNT] = NULL;
    check_fields(d, spec, fields, NULL);
    int provider = -1;
    bool have_provider =
        get_enum(d, spec, "provider", provider_list, KW_PROVIDER__COUNT, &provider);
    b->provider = have_provider ? (enum kw_provider)provider : KW_PROVIDER_OPENAI;
    if (have_provider && !kw_provider_info(b->provider)->supported) {
        /* named so that the message is clear, refused so that nothing answers 501 later */
        char supported[256] = "";
        for (int p = 0; p < KW_PROVIDER__COUNT; p++)
            if (kw_provider_info((enum kw_provider)p)->supported)
                snprintf(supported + strlen(supported), sizeof(supported) - strlen(supported),
                         "%s%s", supported[0] ? ", " : "", kw_provider_name((enum kw_provider)p));
        size_t pm = push(d, "provider");
        kw_dec_error(d, kw_node_get(spec, "provider"),
                     "%s is not supported by this version (its API is not translated yet); "
                     "supported: %s",
                     kw_provider_name(b->provider), supported);
        pop(d, pm);
    }
    b->model_name = get_string(d, spec, "modelName", false, KW_MAX_MODEL_LEN, NULL);
    decode_upstream(d, spec, b);
    decode_credentials(d, spec, b);
    decode_params(d, spec, &b->params);
    decode_backend_traffic(d, spec, b);
    size_t rmark;
    const struct kw_node *rs = get_map(d, spec, "reasoning", false, &rmark);
    if (rs != NULL) {
        check_fields(d, rs, reasoning_fields, NULL);
        int v;
        if (kw_node_get(rs, "content") != NULL &&
            get_enum(d, rs, "content", reasoning_content, 2, &v))
            b->reasoning_omit = v == 1;
    }
    pop(d, rmark);
    int so;
    if (kw_node_get(spec, "structuredOutputs") != NULL &&
        get_enum(d, spec, "structuredOutputs", structured, 2, &so))
        b->structured_outputs = (enum kw_structured)so;
    size_t pmark;
    const struct kw_node *pr = get_map(d, spec, "pricing", false, &pmark);
    if (pr != NULL) {
        check_fields(d, pr, pricing_fields, NULL);
        bool in = get_money(d, pr, "inputPerMillion", true, 1000000, &b->pricing.input_per_million);
        bool outp =
            get_money(d, pr, "outputPerMillion", true, 1000000, &b->pricing.output_per_million);
        b->pricing.cached_input_per_million = b->pricing.input_per_million;
        get_money(d, pr, "cachedInputPerMillion", false, 1000000,
                  &b->pricing.cached_input_per_million);
        b->pricing.set = in && outp;
    }
    pop(d, pmark);

    struct kw_upstream *u = &b->upstream;
    bool any = u->base_url != NULL || u->service_ref.name != NULL || u->nendpoints > 0;
    bool tried = kw_node_get(kw_node_get(spec, "upstream"), "baseURL") != NULL ||
                 kw_node_get(kw_node_get(spec, "upstream"), "serviceRef") != NULL ||
                 kw_node_get(kw_node_get(spec, "upstream"), "endpoints") != NULL;
    if (!any && !tried && have_provider) {
        const char *vr = b->credentials.vertex.region;
        if (b->provider == KW_PROVIDER_AWS_BEDROCK && b->credentials.bedrock.region != NULL)
            u->base_url = kw_arena_printf(d->a, "https://bedrock-runtime.%s.amazonaws.com",
                                          b->credentials.bedrock.region);
        else if (b->provider == KW_PROVIDER_VERTEX_AI && vr != NULL)
            u->base_url = strcmp(vr, "global") == 0
                              ? "https://aiplatform.googleapis.com"
                              : kw_arena_printf(d->a, "https://%s-aiplatform.googleapis.com", vr);
        else
            u->base_url = kw_provider_default_base_url(b->provider);
        if (u->base_url == NULL && b->provider != KW_PROVIDER_AWS_BEDROCK &&
            b->provider != KW_PROVIDER_VERTEX_AI) {
            size_t mark = push(d, "upstream");
            kw_dec_error(d, spec,
                         "provider %s has no public endpoint: set baseURL, serviceRef "
                         "or endpoints",
                         kw_provider_name(b->provider));
            pop(d, mark);
        }
    }
}

/* A list of model patterns (a name, or a prefix ending in "*"), each once. */
static void decode_models(struct kw_dec *d, const struct kw_node *m, const char *key, bool required,
                          struct kw_model_match **out, size_t *nout)
{
    size_t sm;
    const struct kw_node *models = get_seq(d, m, key, required, KW_MAX_MATCH_ITEMS, &sm);
    struct kw_model_match *list = NULL;
    size_t n = 0;
    if (models != NULL)
        list = kw_arena_alloc(d->a, (models->n + 1) * sizeof(*list));
    for (size_t i = 0; list != NULL && i < models->n; i++) {
        size_t im = push_index(d, i);
        const struct kw_node *s = models->items[i];
        const char *star = s->type == KW_NODE_STRING ? memchr(s->str, '*', s->len) : NULL;
        if (s->type != KW_NODE_STRING || s->len == 0)
            kw_dec_error(d, s,
                         "must be a non-empty string (a model name, or a prefix ending in *)");
        else if (s->len > KW_MAX_MODEL_LEN || has_ctl(s->str, s->len) || strlen(s->str) != s->len)
            kw_dec_error(d, s, "must be a model name of at most %u printable bytes",
                         KW_MAX_MODEL_LEN);
        else if (star != NULL && star != s->str + s->len - 1)
            kw_dec_error(d, s, "\"*\" may only end a prefix, as in \"llama-3*\"");
        else {
            struct kw_model_match mm = {
                .value = kw_arena_strndup(d->a, s->str, star != NULL ? s->len - 1 : s->len),
                .prefix = star != NULL};
            bool dup = false;
            for (size_t j = 0; j < n; j++)
                dup |= list[j].prefix == mm.prefix && strcmp(list[j].value, mm.value) == 0;
            if (dup)
                kw_dec_error(d, s, "\"%s\" is listed twice", s->str);
            else
                list[n++] = mm;
        }
        pop(d, im);
    }
    pop(d, sm);
    *out = list;
    *nout = n;
}

static void decode_match(struct kw_dec *d, const struct kw_node *spec, struct kw_route *r)
{
    static const char *const fields[] = {"models", "headers", "paths", NULL};
    static const char *const api_paths[] = {"/v1/chat/completions", "/v1/completions",
                                            "/v1/embeddings", "/v1/messages", NULL};
    size_t mark;
    const struct kw_node *m = get_map(d, spec, "match", true, &mark);
    if (m == NULL) {
        pop(d, mark);
        return;
    }
    check_fields(d, m, fields, NULL);
    decode_models(d, m, "models", true, &r->models, &r->nmodels);

    r->headers = decode_headers(d, m, "headers", &r->nheaders, false);

    size_t pm;
    const struct kw_node *paths = get_seq(d, m, "paths", false, KW_MAX_MATCH_ITEMS, &pm);
    if (paths != NULL && paths->n > 0)
        r->paths = kw_arena_alloc(d->a, paths->n * sizeof(*r->paths));
    for (size_t i = 0; r->paths != NULL && i < paths->n; i++) {
        size_t im = push_index(d, i);
        const struct kw_node *s = paths->items[i];
        if (s->type != KW_NODE_STRING || !in_list(s->str, s->len, api_paths)) {
            const char *hint = s->type == KW_NODE_STRING ? suggest(s->str, api_paths) : NULL;
            kw_dec_error(d, s,
                         "must be one of /v1/chat/completions, /v1/completions, "
                         "/v1/embeddings, /v1/messages%s%s%s",
                         hint != NULL ? " (did you mean \"" : "", hint != NULL ? hint : "",
                         hint != NULL ? "\"?)" : "");
        } else {
            bool dup = false;
            for (size_t j = 0; j < r->npaths; j++)
                dup |= strcmp(r->paths[j], s->str) == 0;
            if (dup)
                kw_dec_error(d, s, "\"%s\" is listed twice", s->str);
            else
                r->paths[r->npaths++] = kw_arena_strndup(d->a, s->str, s->len);
        }
        pop(d, im);
    }
    pop(d, pm);
    pop(d, mark);
}

/* spec.loadBalancer and spec.retry (docs/configuration.md, "Traffic management"). */
static void decode_route_traffic(struct kw_dec *d, const struct kw_node *spec, struct kw_route *r)
{
    static const char *const lb_fields[] = {"strategy", "clientOverride", NULL};
    static const char *const strategies[KW_LB_COUNT + 1] = {"WeightedRandom", "RoundRobin",
                                                            "LeastRequest", "Latency", NULL};
    static const char *const retry_fields[] = {
        "attempts", "retryOn", "backoff", "perTryTimeout", "budgetPercent", "midStream", NULL};
    static const char *const mid_stream[] = {"None", "Continue", NULL};
    static const char *const backoff_fields[] = {"base", "max", NULL};
    static const char *const retry_on[] = {
        "connect-failure", "reset", "timeout", "5xx", "429", NULL};
    r->retry.retry_on = KW_RETRY_CONNECT_FAILURE | KW_RETRY_RESET | KW_RETRY_5XX;
    r->retry.backoff_base_ms = KW_DEFAULT_BACKOFF_BASE_MS;
    r->retry.backoff_max_ms = KW_DEFAULT_BACKOFF_MAX_MS;
    r->retry.budget_percent = KW_DEFAULT_RETRY_BUDGET_PERCENT;
    size_t mark;
    const struct kw_node *m = get_map(d, spec, "loadBalancer", false, &mark);
    if (m != NULL) {
        check_fields(d, m, lb_fields, NULL);
        int v;
        if (kw_node_get(m, "strategy") != NULL &&
            get_enum(d, m, "strategy", strategies, KW_LB_COUNT, &v))
            r->load_balancer.strategy = (enum kw_lb_strategy)v;
        get_bool(d, m, "clientOverride", &r->load_balancer.client_override);
    }
    pop(d, mark);
    m = get_map(d, spec, "retry", false, &mark);
    if (m != NULL) {
        check_fields(d, m, retry_fields, NULL);
        get_u32(d, m, "attempts", 1, KW_MAX_RETRY_ATTEMPTS, &r->retry.attempts);
        size_t om;
        const struct kw_node *on = get_seq(d, m, "retryOn", false, 8, &om);
        if (on != NULL) {
            r->retry.retry_on = 0;
            for (size_t i = 0; i < on->n; i++) {
                size_t im = push_index(d, i);
                const struct kw_node *it = on->items[i];
                size_t k = 0;
                /* 429 may be written bare (an integer) */
                while (retry_on[k] != NULL &&
                       ((it->type != KW_NODE_STRING && it->type != KW_NODE_INT) ||
                        it->str == NULL || strcmp(it->str, retry_on[k]) != 0))
                    k++;
                if (retry_on[k] == NULL)
                    kw_dec_error(d, it, "must be one of connect-failure, reset, timeout, 5xx, 429");
                else
                    r->retry.retry_on |= 1u << k;
                pop(d, im);
            }
        }
        pop(d, om);
        size_t bm;
        const struct kw_node *bo = get_map(d, m, "backoff", false, &bm);
        if (bo != NULL) {
            check_fields(d, bo, backoff_fields, NULL);
            get_duration(d, bo, "base", 1, 60000, &r->retry.backoff_base_ms);
            get_duration(d, bo, "max", 1, 300000, &r->retry.backoff_max_ms);
            if (r->retry.backoff_max_ms < r->retry.backoff_base_ms)
                kw_dec_error(d, bo, "max must not be below base");
        }
        pop(d, bm);
        get_duration(d, m, "perTryTimeout", 1, 24 * 3600000LL, &r->retry.per_try_timeout_ms);
        get_u32(d, m, "budgetPercent", 1, 100, &r->retry.budget_percent);
        int ms;
        if (kw_node_get(m, "midStream") != NULL && get_enum(d, m, "midStream", mid_stream, 2, &ms))
            r->retry.mid_stream = (enum kw_mid_stream)ms;
    }
    pop(d, mark);
}

/* A decimal amount of USD ("12.50", at most 6 decimals) in micro-USD. */
static bool get_money(struct kw_dec *d, const struct kw_node *m, const char *key, bool required,
                      int64_t max_units, int64_t *out)
{
    size_t mark;
    const struct kw_node *n = kw_node_get(m, key);
    mark = push(d, key);
    bool ok = false;
    if (n == NULL || n->type == KW_NODE_NULL) {
        if (required)
            kw_dec_error(d, n != NULL ? n : m, "required field is missing");
    } else if (n->type != KW_NODE_STRING && n->type != KW_NODE_INT && n->type != KW_NODE_FLOAT) {
        kw_dec_error(d, n, "must be a decimal string like \"2.50\", not %s", a_type(n->type));
    } else {
        /* the source text: a float would lose digits, the scalar's text does not */
        const char *s = n->str;
        int64_t units = 0, frac = 0;
        int fd = 0;
        size_t i = 0;
        bool bad = s == NULL || s[0] == '\0';
        for (; !bad && s[i] >= '0' && s[i] <= '9'; i++) {
            units = units * 10 + (s[i] - '0');
            bad = units > max_units;
        }
        if (!bad && i == 0)
            bad = true;
        if (!bad && s[i] == '.') {
            for (i++; s[i] >= '0' && s[i] <= '9'; i++)
                if (++fd <= 6)
                    frac = frac * 10 + (s[i] - '0');
                else
                    bad = true;
            bad |= fd == 0;
        }
        bad = bad || s[i] != '\0';
        if (bad) {
            kw_dec_error(d, n,
                         "must be a non-negative decimal amount of at most %lld with at most 6 "
                         "decimals, like \"2.50\"",
                         (long long)max_units);
        } else {
            for (; fd < 6; fd++)
                frac *= 10;
            *out = units * 1000000 + frac;
            ok = true;
        }
    }
    pop(d, mark);
    return ok;
}

/* spec.rateLimits of a route, spec.limits of a consumer (docs/configuration.md, "Rate
 * limits"). A consumer's limits count per consumer and take no clientSelector. */
static void decode_rate_limits(struct kw_dec *d, const struct kw_node *spec, const char *key,
                               bool of_consumer, struct kw_rate_limit **out, size_t *nout)
{
    static const char *const fields[] = {"name",   "key",   "clientSelector", "requests",
                                         "tokens", "scope", "enforce",        NULL};
    static const char *const consumer_fields[] = {"name",  "key",     "requests", "tokens",
                                                  "scope", "enforce", NULL};
    static const char *const sel_fields[] = {"consumers", "headers", NULL};
    static const char *const req_fields[] = {"limit", "window", NULL};
    static const char *const tok_fields[] = {"limit", "window", "count", NULL};
    static const char *const keys[] = {"Consumer", "User", "Header/<name>", "ClientIP", NULL};
    static const char *const counts[] = {"Total", "Input", "Output", NULL};
    static const char *const scopes[] = {"Local", "Global", NULL};
    static const char *const enforces[] = {"Request", "Stream", NULL};
    size_t mark;
    const struct kw_node *seq = get_seq(d, spec, key, false, KW_MAX_RATE_LIMITS, &mark);
    struct kw_rate_limit *list = NULL;
    size_t n = 0;
    if (seq != NULL && seq->n > 0)
        list = kw_arena_alloc(d->a, seq->n * sizeof(*list));
    for (size_t i = 0; list != NULL && i < seq->n; i++) {
        size_t im;
        const struct kw_node *m = item_map(d, seq, i, &im);
        if (m == NULL) {
            pop(d, im);
            continue;
        }
        unsigned before = d->errors;
        struct kw_rate_limit *l = &list[n];
        memset(l, 0, sizeof(*l));
        check_fields(d, m, of_consumer ? consumer_fields : fields, NULL);
        const struct kw_node *where;
        l->name = get_string(d, m, "name", true, 63, &where);
        if (l->name != NULL && !kw_valid_dns_label(l->name)) {
            size_t nm = push(d, "name");
            kw_dec_error(d, where, "\"%s\" must be a DNS label (a-z, 0-9, '-')", l->name);
            pop(d, nm);
        }
        for (size_t j = 0; l->name != NULL && j < n; j++)
            if (strcmp(list[j].name, l->name) == 0) {
                size_t nm = push(d, "name");
                kw_dec_error(d, where, "limit \"%s\" is defined twice", l->name);
                pop(d, nm);
            }
        const struct kw_node *kn = kw_node_get(m, "key");
        if (kn != NULL && kn->type == KW_NODE_STRING && strncmp(kn->str, "Header/", 7) == 0) {
            size_t km = push(d, "key");
            l->key = KW_LIMIT_KEY_HEADER;
            if (kn->len == 7 || kn->len > 7 + KW_MAX_HEADER_NAME || !is_token(kn->str + 7))
                kw_dec_error(d, kn, "Header/ must be followed by a header name");
            else
                l->header = kw_arena_strndup(d->a, kn->str + 7, kn->len - 7);
            pop(d, km);
        } else if (kn != NULL) {
            int v;
            if (get_enum(d, m, "key", keys, 4, &v))
                l->key = (enum kw_limit_key)v;
        }
        size_t sm;
        const struct kw_node *sel =
            of_consumer ? NULL : get_map(d, m, "clientSelector", false, &sm);
        if (sel != NULL) {
            check_fields(d, sel, sel_fields, NULL);
            size_t cm;
            const struct kw_node *cs = get_seq(d, sel, "consumers", false, KW_MAX_MATCH_ITEMS, &cm);
            if (cs != NULL && cs->n > 0)
                l->consumers = kw_arena_alloc(d->a, cs->n * sizeof(*l->consumers));
            for (size_t k = 0; l->consumers != NULL && k < cs->n; k++) {
                size_t ik = push_index(d, k);
                const struct kw_node *c = cs->items[k];
                const char *slash = c->type == KW_NODE_STRING ? strchr(c->str, '/') : NULL;
                bool ok = c->type == KW_NODE_STRING && c->len > 0 && c->len <= 317;
                if (ok && slash != NULL) {
                    char ns[64];
                    size_t nl = (size_t)(slash - c->str);
                    ok = nl < sizeof(ns);
                    if (ok) {
                        memcpy(ns, c->str, nl);
                        ns[nl] = '\0';
                        ok = kw_valid_dns_label(ns) && kw_valid_dns_subdomain(slash + 1);
                    }
                } else if (ok) {
                    ok = kw_valid_dns_subdomain(c->str);
                }
                if (!ok)
                    kw_dec_error(d, c,
                                 "must name an LLMConsumer as \"name\" or \"namespace/name\"");
                else
                    l->consumers[l->nconsumers++] = kw_arena_strndup(d->a, c->str, c->len);
                pop(d, ik);
            }
            pop(d, cm);
            l->headers = decode_headers(d, sel, "headers", &l->nheaders, false);
        }
        if (!of_consumer)
            pop(d, sm);
        size_t rm, tm;
        const struct kw_node *rq = get_map(d, m, "requests", false, &rm);
        pop(d, rm);
        const struct kw_node *tk = get_map(d, m, "tokens", false, &tm);
        pop(d, tm);
        if (rq != NULL) {
            size_t qm = push(d, "requests");
            check_fields(d, rq, req_fields, NULL);
            pop(d, qm);
        }
        if (tk != NULL) {
            size_t qm = push(d, "tokens");
            check_fields(d, tk, tok_fields, NULL);
            pop(d, qm);
        }
        if ((rq == NULL) == (tk == NULL)) {
            kw_dec_error(d, m,
                         "set exactly one of requests {limit, window} or tokens {limit, "
                         "window, count}");
        } else {
            const struct kw_node *q = rq != NULL ? rq : tk;
            size_t qm = push(d, rq != NULL ? "requests" : "tokens");
            int64_t v = 0;
            if (!get_int(d, q, "limit", 1, 1000000000000LL, &v) &&
                kw_node_get(q, "limit") == NULL) {
                size_t lm = push(d, "limit");
                kw_dec_error(d, q, "required field is missing");
                pop(d, lm);
            }
            l->limit = (uint64_t)v;
            l->window_ms = 60000;
            get_duration(d, q, "window", 1000, 31LL * 86400000, &l->window_ms);
            l->tokens = tk != NULL;
            int c;
            if (tk != NULL && kw_node_get(q, "count") != NULL &&
                get_enum(d, q, "count", counts, 3, &c))
                l->count = (enum kw_limit_count)c;
            pop(d, qm);
        }
        int v;
        if (kw_node_get(m, "scope") != NULL && get_enum(d, m, "scope", scopes, 2, &v))
            l->global = v == 1;
        if (kw_node_get(m, "enforce") != NULL && get_enum(d, m, "enforce", enforces, 2, &v)) {
            l->enforce_stream = v == 1;
            if (l->enforce_stream && rq != NULL && tk == NULL) {
                size_t em = push(d, "enforce");
                kw_dec_error(d, kw_node_get(m, "enforce"),
                             "Stream applies to token limits only (a request is counted when "
                             "it starts)");
                pop(d, em);
            }
        }
        if (of_consumer && l->key != KW_LIMIT_KEY_CONSUMER && l->key != KW_LIMIT_KEY_USER) {
            size_t km = push(d, "key");
            kw_dec_error(d, kn, "a consumer's limit counts per Consumer or per User");
            pop(d, km);
        }
        if (d->errors == before)
            n++;
        pop(d, im);
    }
    pop(d, mark);
    *out = list;
    *nout = n;
}

static int attr_cmp(const void *x, const void *y)
{
    return strcmp(((const struct kw_header *)x)->name, ((const struct kw_header *)y)->name);
}

/* A map of attributes (LLMConsumer spec.attributes, LLMRoute spec.consumers.matchAttributes):
 * names 1..63 printable bytes, values at most 256, at most KW_MAX_ATTRIBUTES; sorted by
 * name. NULL when absent. */
static struct kw_header *decode_attributes(struct kw_dec *d, const struct kw_node *m,
                                           const char *key, size_t *n)
{
    size_t mark;
    struct kw_header *out = NULL;
    *n = 0;
    const struct kw_node *attrs = get_map(d, m, key, false, &mark);
    if (attrs != NULL && attrs->n > KW_MAX_ATTRIBUTES)
        kw_dec_error(d, attrs, "must have at most %u entries", KW_MAX_ATTRIBUTES);
    else if (attrs != NULL)
        out = kw_arena_alloc(d->a, (attrs->n + 1) * sizeof(*out));
    for (size_t i = 0; out != NULL && i < attrs->n; i++) {
        const struct kw_node *k = attrs->pairs[i].key, *v = attrs->pairs[i].val;
        size_t am = push(d, k->str);
        if (k->len == 0 || k->len > 63 || has_ctl(k->str, k->len))
            kw_dec_error(d, k, "attribute names are 1..63 printable bytes");
        else if (v->type != KW_NODE_STRING || v->len > 256 || has_ctl(v->str, v->len) ||
                 strlen(v->str) != v->len)
            kw_dec_error(d, v, "must be a string of at most 256 printable bytes");
        else
            out[(*n)++] = (struct kw_header){.name = kw_arena_strndup(d->a, k->str, k->len),
                                             .value = kw_arena_strndup(d->a, v->str, v->len)};
        pop(d, am);
    }
    pop(d, mark);
    if (*n > 1)
        qsort(out, *n, sizeof(*out), attr_cmp);
    return out;
}

/* spec.consumers {namespaces, matchAttributes} */
static void decode_route_consumers(struct kw_dec *d, const struct kw_node *spec, struct kw_route *r)
{
    static const char *const fields[] = {"namespaces", "matchAttributes", NULL};
    size_t mark, sm;
    const struct kw_node *m = get_map(d, spec, "consumers", false, &mark);
    if (m != NULL) {
        check_fields(d, m, fields, NULL);
        const struct kw_node *ns = get_seq(d, m, "namespaces", false, 64, &sm);
        if (ns != NULL && ns->n > 0)
            r->consumers.namespaces = kw_arena_alloc(d->a, ns->n * sizeof(char *));
        for (size_t i = 0; r->consumers.namespaces != NULL && i < ns->n; i++) {
            size_t im = push_index(d, i);
            const struct kw_node *it = ns->items[i];
            if (it->type != KW_NODE_STRING ||
                (strcmp(it->str, "*") != 0 && !kw_valid_dns_label(it->str)))
                kw_dec_error(d, it, "must be a namespace name or \"*\" (any namespace)");
            else
                r->consumers.namespaces[r->consumers.nnamespaces++] =
                    kw_arena_strndup(d->a, it->str, it->len);
            pop(d, im);
        }
        pop(d, sm);
        r->consumers.match = decode_attributes(d, m, "matchAttributes", &r->consumers.nmatch);
    }
    pop(d, mark);
}

void kw_decode_route_spec(struct kw_dec *d, const struct kw_node *spec, struct kw_route *r)
{
    static const char *const fields[] = {
        "match",           "backendRefs", "timeout",    "streamIdleTimeout",
        "loadBalancer",    "retry",       "rateLimits", "estimatedOutputTokens",
        "maxOutputTokens", "consumers",   NULL};
    static const char *const ref_fields[] = {"name", "weight", "priority", "modelOverride", NULL};
    check_fields(d, spec, fields, NULL);
    decode_match(d, spec, r);

    size_t mark;
    const struct kw_node *refs = get_seq(d, spec, "backendRefs", true, KW_MAX_BACKEND_REFS, &mark);
    if (refs != NULL)
        r->refs = kw_arena_alloc(d->a, refs->n * sizeof(*r->refs));
    bool any_weight = false;
    for (size_t i = 0; r->refs != NULL && i < refs->n; i++) {
        size_t im;
        const struct kw_node *m = item_map(d, refs, i, &im);
        if (m != NULL) {
            check_fields(d, m, ref_fields, NULL);
            struct kw_backend_ref *ref = &r->refs[r->nrefs];
            ref->weight = 1;
            const struct kw_node *where;
            ref->name = get_string(d, m, "name", true, KW_MAX_NAME_LEN, &where);
            ref->line = where->line;
            ref->col = where->col;
            get_u32(d, m, "weight", 0, KW_MAX_WEIGHT, &ref->weight);
            get_u32(d, m, "priority", 0, KW_MAX_PRIORITY, &ref->priority);
            ref->model_override = get_string(d, m, "modelOverride", false, KW_MAX_MODEL_LEN, NULL);
            size_t nm = push(d, "name");
            if (ref->name != NULL && !kw_valid_dns_subdomain(ref->name)) {
                kw_dec_error(d, where, "\"%s\" is not a valid LLMBackend name", ref->name);
                ref->name = NULL;
            }
            for (size_t j = 0; ref->name != NULL && j < r->nrefs; j++)
                if (strcmp(r->refs[j].name, ref->name) == 0) {
                    kw_dec_error(d, where, "backend \"%s\" is referenced twice", ref->name);
                    ref->name = NULL;
                }
            pop(d, nm);
            if (ref->name != NULL) {
                any_weight |= ref->weight > 0;
                r->nrefs++;
            }
        }
        pop(d, im);
    }
    if (r->nrefs > 0 && !any_weight)
        kw_dec_error(d, refs, "every weight is 0: no backend would receive traffic");
    pop(d, mark);

    r->timeout_ms = KW_DEFAULT_ROUTE_TIMEOUT_MS;
    r->stream_idle_timeout_ms = KW_DEFAULT_STREAM_IDLE_TIMEOUT_MS;
    get_duration(d, spec, "timeout", 1, 24 * 3600000LL, &r->timeout_ms);
    get_duration(d, spec, "streamIdleTimeout", 1000, 24 * 3600000LL, &r->stream_idle_timeout_ms);
    decode_route_traffic(d, spec, r);
    decode_rate_limits(d, spec, "rateLimits", false, &r->rate_limits, &r->nrate_limits);
    r->estimated_output_tokens = KW_DEFAULT_ESTIMATED_OUTPUT;
    get_int(d, spec, "estimatedOutputTokens", 1, KW_MAX_OUTPUT_TOKENS, &r->estimated_output_tokens);
    get_int(d, spec, "maxOutputTokens", 1, KW_MAX_OUTPUT_TOKENS, &r->max_output_tokens);
    decode_route_consumers(d, spec, r);
}

/* ---- LLMConsumer ---------------------------------------------------------------------- */

/* Snapshots carry a consumer's keys as SHA-256 digests only: 64 hex digits each, sorted. */
static void decode_key_hashes(struct kw_dec *d, const struct kw_node *spec, struct kw_consumer *c)
{
    size_t mark;
    const struct kw_node *hs = get_seq(d, spec, "keySha256", false, KW_MAX_CONSUMER_KEYS, &mark);
    if (hs != NULL)
        c->key_hashes = kw_arena_alloc(d->a, (hs->n + 1) * sizeof(*c->key_hashes));
    for (size_t i = 0; c->key_hashes != NULL && i < hs->n; i++) {
        const struct kw_node *h = hs->items[i];
        bool ok = h->type == KW_NODE_STRING && h->len == 64;
        for (size_t k = 0; ok && k < 64; k++)
            ok = (h->str[k] >= '0' && h->str[k] <= '9') || (h->str[k] >= 'a' && h->str[k] <= 'f');
        if (ok && c->nkey_hashes > 0 && strcmp(c->key_hashes[c->nkey_hashes - 1], h->str) >= 0)
            ok = false;
        size_t im = push_index(d, i);
        if (!ok)
            kw_dec_error(d, h, "must be sorted, distinct SHA-256 digests in lower-case hex");
        else
            c->key_hashes[c->nkey_hashes++] = kw_arena_strndup(d->a, h->str, h->len);
        pop(d, im);
    }
    pop(d, mark);
}

void kw_decode_consumer_spec(struct kw_dec *d, const struct kw_node *spec, struct kw_consumer *c)
{
    static const char *const fields[] = {"apiKeys", "attributes", "models",
                                         "limits",  "budget",     NULL};
    static const char *const snap_fields[] = {"attributes", "models", "keySha256",
                                              "limits",     "budget", NULL};
    static const char *const budget_fields[] = {"limit", "currency", "period", "enforce", NULL};
    static const char *const periods[] = {"Day", "Week", "Month", NULL};
    static const char *const enforces[] = {"Request", "Stream", NULL};
    static const char *const key_fields[] = {"secretRef", NULL};
    static const char *const ref_fields[] = {"name", "key", NULL};
    check_fields(d, spec, d->snapshot ? snap_fields : fields, NULL);
    if (d->snapshot)
        decode_key_hashes(d, spec, c);
    size_t mark;
    const struct kw_node *keys = get_seq(d, spec, "apiKeys", false, KW_MAX_API_KEY_REFS, &mark);
    if (keys != NULL)
        c->api_keys = kw_arena_alloc(d->a, (keys->n + 1) * sizeof(*c->api_keys));
    for (size_t i = 0; c->api_keys != NULL && i < keys->n; i++) {
        size_t im = push_index(d, i);
        const struct kw_node *k = keys->items[i];
        if (k->type != KW_NODE_MAP) {
            kw_dec_error(d, k, "must be a map with secretRef {name, key?}");
            pop(d, im);
            continue;
        }
        check_fields(d, k, key_fields, NULL);
        size_t rm;
        const struct kw_node *ref = get_map(d, k, "secretRef", true, &rm);
        if (ref != NULL) {
            check_fields(d, ref, ref_fields, NULL);
            struct kw_secret_ref *out = &c->api_keys[c->napi_keys];
            memset(out, 0, sizeof(*out));
            const struct kw_node *where;
            out->name = get_string(d, ref, "name", true, KW_MAX_NAME_LEN, &where);
            out->line = where->line;
            out->col = where->col;
            out->key = get_string(d, ref, "key", false, KW_MAX_NAME_LEN, NULL);
            if (out->name != NULL && !kw_valid_dns_subdomain(out->name)) {
                size_t nm = push(d, "name");
                kw_dec_error(d, where, "\"%s\" is not a valid Secret name", out->name);
                pop(d, nm);
            } else if (out->name != NULL) {
                c->napi_keys++;
            }
        }
        pop(d, rm);
        pop(d, im);
    }
    pop(d, mark);
    c->attributes = decode_attributes(d, spec, "attributes", &c->nattributes);
    decode_models(d, spec, "models", false, &c->models, &c->nmodels);
    decode_rate_limits(d, spec, "limits", true, &c->limits, &c->nlimits);
    const struct kw_node *b = get_map(d, spec, "budget", false, &mark);
    if (b != NULL) {
        check_fields(d, b, budget_fields, NULL);
        int64_t micro;
        c->budget.set = get_money(d, b, "limit", true, 1000000000, &micro);
        c->budget.limit_nusd = micro * 1000;
        const struct kw_node *cur = kw_node_get(b, "currency");
        if (cur != NULL && (cur->type != KW_NODE_STRING || strcmp(cur->str, "USD") != 0)) {
            size_t cm = push(d, "currency");
            kw_dec_error(d, cur, "only USD is supported (prices are in USD)");
            pop(d, cm);
        }
        int v;
        if (get_enum(d, b, "period", periods, 3, &v))
            c->budget.period = (enum kw_period)v;
        else
            c->budget.set = false;
        if (kw_node_get(b, "enforce") != NULL && get_enum(d, b, "enforce", enforces, 2, &v))
            c->budget.enforce_stream = v == 1;
    }
    pop(d, mark);
}

/* ---- Secret ------------------------------------------------------------------------- */

static bool valid_secret_key(const char *s, size_t len)
{
    if (len == 0 || len > KW_MAX_NAME_LEN || strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return false;
    return strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Standard base64 with padding, as the API server stores Secret data. */
static char *base64_decode(struct kw_arena *a, const char *in, size_t len, size_t *outlen)
{
    if (len % 4 != 0)
        return NULL;
    char *out = kw_arena_alloc(a, len / 4 * 3 + 1);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)in[i]) && in[i] != '+' && in[i] != '/' && in[i] != '=')
            return NULL;
    int n = EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)in, (int)len);
    if (n < 0)
        return NULL;
    size_t pad = 0;
    if (len >= 1 && in[len - 1] == '=')
        pad++;
    if (len >= 2 && in[len - 2] == '=')
        pad++;
    /* '=' only as trailing padding */
    if (memchr(in, '=', len - pad) != NULL)
        return NULL;
    *outlen = (size_t)n - pad;
    out[*outlen] = '\0';
    return out;
}

/* Static files only: a stringData value that is exactly ${NAME} or ${NAME:-default} is
 * read from the environment, so a file can be committed without its keys. */
static int expand_env(struct kw_dec *d, const struct kw_node *v, const char **val, size_t *vlen)
{
    if (v->len < 4 || v->str[0] != '$' || v->str[1] != '{' || v->str[v->len - 1] != '}')
        return KW_OK;
    const char *name = v->str + 2, *end = v->str + v->len - 1;
    const char *dflt = strstr(name, ":-");
    const char *name_end = dflt != NULL && dflt < end ? dflt : end;
    char env[256];
    size_t nlen = (size_t)(name_end - name);
    bool ok = nlen > 0 && nlen < sizeof(env) && !isdigit((unsigned char)name[0]);
    for (size_t i = 0; ok && i < nlen; i++)
        ok = isalnum((unsigned char)name[i]) || name[i] == '_';
    if (!ok) {
        kw_dec_error(d, v, "\"%.100s\" is not ${NAME} or ${NAME:-default}", v->str);
        return KW_ERROR;
    }
    memcpy(env, name, nlen);
    env[nlen] = '\0';
    const char *got = getenv(env);
    if (got == NULL && dflt == NULL) {
        kw_dec_error(d, v, "environment variable %s is not set (write ${%s:-} to allow that)", env,
                     env);
        return KW_ERROR;
    }
    if (got == NULL) {
        *val = dflt + 2;
        *vlen = (size_t)(end - (dflt + 2));
    } else {
        *val = got;
        *vlen = strlen(got);
    }
    return KW_OK;
}

static void decode_secret_map(struct kw_dec *d, const struct kw_node *doc, const char *key,
                              struct kw_secret *s, bool b64, size_t *total)
{
    size_t mark;
    const struct kw_node *m = get_map(d, doc, key, false, &mark);
    for (size_t i = 0; m != NULL && i < m->n; i++) {
        const struct kw_node *k = m->pairs[i].key, *v = m->pairs[i].val;
        size_t km = push(d, k->str);
        if (!valid_secret_key(k->str, k->len)) {
            kw_dec_error(d, k, "invalid key (letters, digits, '-', '_' and '.')");
        } else if (v->type != KW_NODE_STRING) {
            kw_dec_error(d, v, "must be a string, not %s", a_type(v->type));
        } else {
            const char *val = v->str;
            size_t vlen = v->len;
            if (!b64 && d->file != NULL && expand_env(d, v, &val, &vlen) != KW_OK) {
                pop(d, km);
                continue;
            }
            if (b64) {
                val = base64_decode(d->a, v->str, v->len, &vlen);
                if (val == NULL)
                    kw_dec_error(d, v, "is not valid base64 (use stringData for plain text)");
            }
            *total += vlen;
            if (val != NULL) {
                /* stringData wins over data for the same key, as in Kubernetes */
                struct kw_secret_item *it = (struct kw_secret_item *)kw_secret_get(s, k->str);
                if (it == NULL)
                    it = &s->items[s->nitems++];
                it->key = kw_arena_strndup(d->a, k->str, k->len);
                it->value = b64 ? val : kw_arena_strndup(d->a, val, vlen);
                it->len = vlen;
            }
        }
        pop(d, km);
    }
    pop(d, mark);
}

static void decode_secret(struct kw_dec *d, const struct kw_node *doc, struct kw_secret *s)
{
    const struct kw_node *data = kw_node_get(doc, "data");
    const struct kw_node *sdata = kw_node_get(doc, "stringData");
    size_t max = (data != NULL && data->type == KW_NODE_MAP ? data->n : 0) +
                 (sdata != NULL && sdata->type == KW_NODE_MAP ? sdata->n : 0);
    if (max > 0)
        s->items = kw_arena_alloc(d->a, max * sizeof(*s->items));
    if (max > 0 && s->items == NULL)
        return;
    s->type = get_string(d, doc, "type", false, 253, NULL);
    bool immutable = false;
    get_bool(d, doc, "immutable", &immutable);
    size_t total = 0;
    decode_secret_map(d, doc, "data", s, true, &total);
    decode_secret_map(d, doc, "stringData", s, false, &total);
    if (total > KW_MAX_SECRET_BYTES)
        kw_dec_error(d, doc, "Secret data is larger than %u bytes", KW_MAX_SECRET_BYTES);
}

/* ---- DataPlane ---------------------------------------------------------------------- */

/* A list of address ranges ("10.0.0.0/8", "::1/128"); NULL when absent. */
static const struct kw_cidr *get_cidrs(struct kw_dec *d, const struct kw_node *m, const char *key,
                                       size_t *n)
{
    size_t mark;
    *n = 0;
    const struct kw_node *seq = get_seq(d, m, key, false, 64, &mark);
    struct kw_cidr *ranges =
        seq != NULL ? kw_arena_alloc(d->a, (seq->n + 1) * sizeof(*ranges)) : NULL;
    for (size_t i = 0; ranges != NULL && i < seq->n; i++) {
        size_t im = push_index(d, i);
        const struct kw_node *it = seq->items[i];
        if (it->type != KW_NODE_STRING || kw_cidr_parse(it->str, &ranges[*n]) != KW_OK)
            kw_dec_error(d, it, "must be an address range like \"10.0.0.0/8\" or \"::1/128\"");
        else
            (*n)++;
        pop(d, im);
    }
    pop(d, mark);
    return ranges;
}

/* spec.auth.jwt[] */
static void decode_jwt(struct kw_dec *d, const struct kw_node *auth, struct kw_dataplane *dp)
{
    static const char *const fields[] = {
        "issuer",        "audiences", "anyAudience", "jwksFile",      "jwksURL",
        "jwksAllowHTTP", "refresh",   "userClaim",   "consumerClaim", NULL};
    size_t mark;
    const struct kw_node *seq = get_seq(d, auth, "jwt", false, KW_MAX_JWT_PROVIDERS, &mark);
    if (seq != NULL && seq->n > 0)
        dp->auth.jwt = kw_arena_alloc(d->a, seq->n * sizeof(*dp->auth.jwt));
    for (size_t i = 0; dp->auth.jwt != NULL && i < seq->n; i++) {
        size_t im;
        const struct kw_node *m = item_map(d, seq, i, &im);
        if (m == NULL) {
            pop(d, im);
            continue;
        }
        unsigned before = d->errors;
        struct kw_jwt_provider *j = &dp->auth.jwt[dp->auth.njwt];
        memset(j, 0, sizeof(*j));
        check_fields(d, m, fields, NULL);
        const struct kw_node *where;
        j->issuer = get_string(d, m, "issuer", true, 1024, &where);
        for (size_t k = 0; j->issuer != NULL && k < dp->auth.njwt; k++)
            if (strcmp(dp->auth.jwt[k].issuer, j->issuer) == 0) {
                size_t nm = push(d, "issuer");
                kw_dec_error(d, where, "issuer \"%.200s\" is listed twice", j->issuer);
                pop(d, nm);
            }
        size_t am;
        const struct kw_node *aud = get_seq(d, m, "audiences", false, 32, &am);
        if (aud != NULL && aud->n > 0)
            j->audiences = kw_arena_alloc(d->a, aud->n * sizeof(*j->audiences));
        for (size_t k = 0; j->audiences != NULL && k < aud->n; k++) {
            size_t ik = push_index(d, k);
            const struct kw_node *a = aud->items[k];
            if (a->type != KW_NODE_STRING || a->len == 0 || a->len > 1024 ||
                has_ctl(a->str, a->len))
                kw_dec_error(d, a, "must be a non-empty string");
            else
                j->audiences[j->naudiences++] = kw_arena_strndup(d->a, a->str, a->len);
            pop(d, ik);
        }
        pop(d, am);
        get_bool(d, m, "anyAudience", &j->any_audience);
        if (j->naudiences == 0 && !j->any_audience && d->errors == before) {
            size_t nm = push(d, "audiences");
            kw_dec_error(d, m,
                         "required: list the audiences (aud) this gateway accepts, or set "
                         "anyAudience: true to accept tokens the issuer made for any application");
            pop(d, nm);
        }
        if (j->naudiences > 0 && j->any_audience)
            kw_dec_error(d, m, "set audiences or anyAudience, not both");
        j->jwks_file = get_string(d, m, "jwksFile", false, 4096, NULL);
        const struct kw_node *uw;
        j->jwks_url = get_url(d, m, "jwksURL", false);
        bool allow_http = false;
        get_bool(d, m, "jwksAllowHTTP", &allow_http);
        if (j->jwks_url != NULL && strncmp(j->jwks_url, "https://", 8) != 0 &&
            (uw = kw_node_get(m, "jwksURL")) != NULL) {
            size_t um = push(d, "jwksURL");
            if (!allow_http || !kw_url_host_is_loopback(j->jwks_url))
                kw_dec_error(d, uw,
                             "must be https:// (the keys decide who may call; plain http:// only "
                             "to a loopback address with jwksAllowHTTP: true)");
            pop(d, um);
        }
        if ((kw_node_get(m, "jwksFile") == NULL) == (kw_node_get(m, "jwksURL") == NULL))
            kw_dec_error(d, m, "set exactly one of jwksFile or jwksURL");
        j->refresh_ms = KW_DEFAULT_JWKS_REFRESH_MS;
        get_duration(d, m, "refresh", 1000, 86400000, &j->refresh_ms);
        j->consumer_claim = get_string(d, m, "consumerClaim", false, 256, NULL);
        j->user_claim = get_string(d, m, "userClaim", false, 256, NULL);
        if (j->user_claim == NULL)
            j->user_claim = "sub";
        if (d->errors == before)
            dp->auth.njwt++;
        pop(d, im);
    }
    pop(d, mark);
}

/* spec.telemetry.otlp: span export (docs/dataplane.md, "Trace context"). */
static void decode_telemetry(struct kw_dec *d, const struct kw_node *spec, struct kw_dataplane *dp)
{
    static const char *const fields[] = {"otlp", "clientSampling", NULL};
    static const char *const sampling[] = {"Authenticated", "Always", "Never", NULL};
    static const char *const otlp_fields[] = {
        "endpoint", "headers", "protocol", "sampleRatio", "timeout", "captureContent", NULL};
    static const char *const protocols[] = {"json", "protobuf", NULL};
    size_t mark, om; /* defaults: kw_dataplane_defaults */
    const struct kw_node *m = get_map(d, spec, "telemetry", false, &mark);
    const struct kw_node *o = m != NULL ? get_map(d, m, "otlp", false, &om) : NULL;
    if (m != NULL) {
        check_fields(d, m, fields, NULL);
        int v;
        if (kw_node_get(m, "clientSampling") != NULL &&
            get_enum(d, m, "clientSampling", sampling, 3, &v))
            dp->telemetry.client_sampling = (enum kw_client_sampling)v;
    }
    if (o != NULL) {
        check_fields(d, o, otlp_fields, NULL);
        dp->telemetry.endpoint = get_url(d, o, "endpoint", true);
        dp->telemetry.headers = decode_headers(d, o, "headers", &dp->telemetry.nheaders, true);
        int v;
        if (kw_node_get(o, "protocol") != NULL && get_enum(d, o, "protocol", protocols, 2, &v))
            dp->telemetry.protobuf = v == 1;
        get_bool(d, o, "captureContent", &dp->telemetry.capture_content);
        const struct kw_node *r = kw_node_get(o, "sampleRatio");
        if (r != NULL) {
            size_t rm = push(d, "sampleRatio");
            double x = r->type == KW_NODE_INT                       ? (double)r->i
                       : r->type == KW_NODE_FLOAT && r->str != NULL ? strtod(r->str, NULL)
                                                                    : -1;
            if (x < 0 || x > 1)
                kw_dec_error(d, r, "must be a number from 0 to 1");
            else
                dp->telemetry.sample_ratio = x;
            pop(d, rm);
        }
        get_duration(d, o, "timeout", 100, 60000, &dp->telemetry.timeout_ms);
    }
    if (m != NULL)
        pop(d, om);
    pop(d, mark);
}

/* spec.usage: the usage ledger's spool and sinks (docs/usage.md). */
static void decode_usage(struct kw_dec *d, const struct kw_node *spec, struct kw_dataplane *dp)
{
    static const char *const fields[] = {"spool", "sinks", NULL};
    static const char *const spool_fields[] = {"dir", "maxBytes", "syncInterval", "onFull", NULL};
    static const char *const sink_fields[] = {"name", "postgres", "jsonl", NULL};
    static const char *const pg_fields[] = {"dsnFile", "table", "batchSize", "flushInterval", NULL};
    static const char *const jsonl_fields[] = {"path", "stdout", NULL};
    static const char *const on_full[] = {"Reject", "Drop", NULL};
    size_t mark;
    const struct kw_node *m = get_map(d, spec, "usage", false, &mark);
    if (m == NULL) { /* defaults: kw_dataplane_defaults */
        pop(d, mark);
        return;
    }
    dp->usage.enabled = true;
    check_fields(d, m, fields, NULL);
    size_t sm;
    const struct kw_node *sp = get_map(d, m, "spool", false, &sm);
    if (sp != NULL) {
        check_fields(d, sp, spool_fields, NULL);
        const char *dir = get_string(d, sp, "dir", false, 3800, NULL);
        if (dir != NULL)
            dp->usage.dir = dir;
        int64_t v;
        if (get_int(d, sp, "maxBytes", 4096, 1LL << 50, &v))
            dp->usage.max_bytes = (uint64_t)v;
        get_duration(d, sp, "syncInterval", 1, 60000, &dp->usage.sync_interval_ms);
        int e;
        if (kw_node_get(sp, "onFull") != NULL && get_enum(d, sp, "onFull", on_full, 2, &e))
            dp->usage.drop_when_full = e == 1;
    }
    pop(d, sm);
    const struct kw_node *seq = get_seq(d, m, "sinks", true, 8, &sm);
    if (seq != NULL)
        dp->usage.sinks = kw_arena_alloc(d->a, seq->n * sizeof(*dp->usage.sinks));
    for (size_t i = 0; dp->usage.sinks != NULL && i < seq->n; i++) {
        size_t im;
        const struct kw_node *it = item_map(d, seq, i, &im);
        if (it == NULL) {
            pop(d, im);
            continue;
        }
        unsigned before = d->errors;
        struct kw_usage_sink *k = &dp->usage.sinks[dp->usage.nsinks];
        memset(k, 0, sizeof(*k));
        check_fields(d, it, sink_fields, NULL);
        size_t pm, jm;
        const struct kw_node *pg = get_map(d, it, "postgres", false, &pm);
        if (pg != NULL) {
            check_fields(d, pg, pg_fields, NULL);
            k->postgres = true;
            k->dsn_file = get_string(d, pg, "dsnFile", true, 4096, NULL);
            const struct kw_node *where;
            k->table = get_string(d, pg, "table", false, 63, &where);
            if (k->table != NULL) {
                bool ok = (k->table[0] >= 'a' && k->table[0] <= 'z') || k->table[0] == '_';
                for (const char *c = k->table; ok && *c != '\0'; c++)
                    ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_';
                if (!ok) {
                    size_t tm = push(d, "table");
                    kw_dec_error(d, where, "must be a lower-case SQL name (a-z, 0-9, _)");
                    pop(d, tm);
                }
            } else {
                k->table = "knoway_usage";
            }
            k->batch_size = 500;
            get_u32(d, pg, "batchSize", 1, 10000, &k->batch_size);
            k->flush_interval_ms = 1000;
            get_duration(d, pg, "flushInterval", 10, 60000, &k->flush_interval_ms);
        }
        pop(d, pm);
        const struct kw_node *jl = get_map(d, it, "jsonl", false, &jm);
        if (jl != NULL) {
            check_fields(d, jl, jsonl_fields, NULL);
            k->path = get_string(d, jl, "path", false, 4096, NULL);
            get_bool(d, jl, "stdout", &k->stdout_);
            if ((k->path != NULL) == k->stdout_)
                kw_dec_error(d, jl, "set exactly one of path or stdout: true");
        }
        pop(d, jm);
        if ((pg != NULL) == (jl != NULL))
            kw_dec_error(d, it, "set exactly one of postgres or jsonl");
        const struct kw_node *where;
        k->name = get_string(d, it, "name", false, 48, &where);
        if (k->name != NULL && !kw_valid_dns_label(k->name)) {
            size_t nm = push(d, "name");
            kw_dec_error(d, where, "\"%s\" must be a DNS label (a-z, 0-9, '-')", k->name);
            pop(d, nm);
        }
        if (k->name == NULL)
            k->name = pg != NULL ? "postgres" : "jsonl";
        for (size_t j = 0; j < dp->usage.nsinks; j++)
            if (strcmp(dp->usage.sinks[j].name, k->name) == 0)
                kw_dec_error(d, it, "two sinks are named \"%s\": name them (sinks[].name)",
                             k->name);
        if (d->errors == before)
            dp->usage.nsinks++;
        pop(d, im);
    }
    pop(d, sm);
    pop(d, mark);
}

/* spec.redis: the URL grammar both binaries share (knoway/redis_contract.h). */
static void decode_redis(struct kw_dec *d, const struct kw_node *spec, struct kw_dataplane *dp)
{
    static const char *const fields[] = {"url",     "passwordFile", "caFile",
                                         "timeout", "failureMode",  NULL};
    static const char *const modes[] = {"Open", "Closed", NULL};
    size_t mark;
    const struct kw_node *m = get_map(d, spec, "redis", false, &mark);
    if (m != NULL) {
        check_fields(d, m, fields, NULL);
        const struct kw_node *where;
        const char *url = get_string(d, m, "url", true, KW_MAX_URL_LEN, &where);
        if (url != NULL) {
            size_t um = push(d, "url");
            struct kw_redis_url u;
            char err[256];
            if (kw_redis_url_parse(url, &u, err, sizeof(err)) != KW_OK) {
                kw_dec_error(d, where, "%s", err);
            } else {
                dp->redis.url = url;
                dp->redis.host = kw_arena_strdup(d->a, u.host);
                dp->redis.user = u.user[0] != '\0' ? kw_arena_strdup(d->a, u.user) : NULL;
                dp->redis.port = u.port;
                dp->redis.db = u.db;
            }
            pop(d, um);
        }
        dp->redis.password_file = get_string(d, m, "passwordFile", false, 4096, NULL);
        const struct kw_node *ca = kw_node_get(m, "caFile");
        if (ca != NULL) {
            size_t cm = push(d, "caFile");
            kw_dec_error(d, ca, "TLS to Redis is not supported (see url)");
            pop(d, cm);
        }
        get_duration(d, m, "timeout", 1, 60000, &dp->redis.timeout_ms);
        int v;
        if (kw_node_get(m, "failureMode") != NULL && get_enum(d, m, "failureMode", modes, 2, &v))
            dp->redis.fail_closed = v == 1;
    }
    pop(d, mark);
}

static void decode_dataplane(struct kw_dec *d, const struct kw_node *spec, struct kw_dataplane *dp)
{
    static const char *const fields[] = {
        "listen", "admin", "adminDebugFrom", "workers",  "discovery",      "limits", "auth",
        "redis",  "usage", "telemetry",      "vertexAI", "trustedProxies", NULL};
    static const char *const auth_fields[] = {"required", "jwt", "failedAttempts", NULL};
    static const char *const fail_fields[] = {"limit", "window", NULL};
    static const char *const disc_fields[] = {"url",       "tokenFile", "nodeId",
                                              "cacheFile", "caFile",    NULL};
    static const char *const lim_fields[] = {"maxBodyBytes",   "maxConnections",
                                             "maxMemoryBytes", "maxConnectionsPerClient",
                                             "readTimeout",    NULL};
    check_fields(d, spec, fields, NULL);
    const char *s;
    if ((s = get_address(d, spec, "listen")) != NULL)
        dp->listen = s;
    if ((s = get_address(d, spec, "admin")) != NULL)
        dp->admin = s;
    get_u32(d, spec, "workers", 0, 256, &dp->workers);
    size_t mark;
    if (kw_node_get(spec, "adminDebugFrom") != NULL)
        dp->debug_from = get_cidrs(d, spec, "adminDebugFrom", &dp->ndebug_from);
    dp->trusted_proxies = get_cidrs(d, spec, "trustedProxies", &dp->ntrusted_proxies);
    const struct kw_node *m = get_map(d, spec, "discovery", false, &mark);
    if (m != NULL) {
        check_fields(d, m, disc_fields, NULL);
        dp->discovery.url = get_url(d, m, "url", true);
        dp->discovery.token_file = get_string(d, m, "tokenFile", false, 4096, NULL);
        dp->discovery.node_id = get_string(d, m, "nodeId", false, 253, NULL);
        dp->discovery.cache_file = get_string(d, m, "cacheFile", false, 4096, NULL);
        if (dp->discovery.cache_file == NULL)
            dp->discovery.cache_file = KW_DEFAULT_CACHE_FILE;
        dp->discovery.ca_file = get_string(d, m, "caFile", false, 4096, NULL);
    }
    pop(d, mark);
    m = get_map(d, spec, "limits", false, &mark);
    if (m != NULL) {
        check_fields(d, m, lim_fields, NULL);
        int64_t v;
        if (get_int(d, m, "maxBodyBytes", 1024, 1024LL * 1024 * 1024, &v))
            dp->limits.max_body_bytes = (uint64_t)v;
        get_u32(d, m, "maxConnections", 1, 1000000, &dp->limits.max_connections);
        if (get_int(d, m, "maxMemoryBytes", 16LL * 1024 * 1024, 1LL << 40, &v))
            dp->limits.max_memory_bytes = (uint64_t)v;
        get_u32(d, m, "maxConnectionsPerClient", 0, 1000000,
                &dp->limits.max_connections_per_client);
        get_duration(d, m, "readTimeout", 1000, 3600000, &dp->limits.read_timeout_ms);
    }
    pop(d, mark);
    m = get_map(d, spec, "auth", false, &mark);
    if (m != NULL) {
        check_fields(d, m, auth_fields, NULL);
        get_bool(d, m, "required", &dp->auth.required);
        decode_jwt(d, m, dp);
        size_t fm;
        const struct kw_node *f = get_map(d, m, "failedAttempts", false, &fm);
        if (f != NULL) {
            check_fields(d, f, fail_fields, NULL);
            get_u32(d, f, "limit", 0, 1000000, &dp->auth.max_failures);
            get_duration(d, f, "window", 1000, 3600000, &dp->auth.failure_window_ms);
        }
        pop(d, fm);
    }
    pop(d, mark);
    decode_redis(d, spec, dp);
    decode_usage(d, spec, dp);
    decode_telemetry(d, spec, dp);
    /* token endpoints a Vertex AI service-account key may name besides Google's: the key
     * comes from a tenant's Secret, the list from whoever runs the data plane */
    m = get_map(d, spec, "vertexAI", false, &mark);
    if (m != NULL) {
        static const char *const vfields[] = {"tokenURLs", NULL};
        check_fields(d, m, vfields, NULL);
        size_t um;
        const struct kw_node *urls = get_seq(d, m, "tokenURLs", false, 16, &um);
        if (urls != NULL && urls->n > 0)
            dp->vertex_token_urls = kw_arena_alloc(d->a, urls->n * sizeof(char *));
        for (size_t i = 0; dp->vertex_token_urls != NULL && i < urls->n; i++) {
            size_t im = push_index(d, i);
            const struct kw_node *u = urls->items[i];
            const char *problem = u->type == KW_NODE_STRING ? url_problem(u->str) : "";
            if (problem != NULL)
                kw_dec_error(d, u, "must be an http(s) URL%s%s", *problem ? ": " : "", problem);
            else
                dp->vertex_token_urls[dp->nvertex_token_urls++] = u->str;
            pop(d, im);
        }
        pop(d, um);
    }
    pop(d, mark);
}

/* ---- documents ---------------------------------------------------------------------- */

static void decode_meta(struct kw_dec *d, const struct kw_node *doc, struct kw_meta *meta,
                        bool namespaced)
{
    static const char *const fields[] = {"name", "namespace", "labels", "annotations", NULL};
    size_t mark;
    const struct kw_node *m = get_map(d, doc, "metadata", true, &mark);
    meta->ns = "default";
    if (m != NULL) {
        check_fields(d, m, fields, ignored_meta);
        const struct kw_node *where;
        meta->name = get_string(d, m, "name", true, KW_MAX_NAME_LEN, &where);
        size_t nm = push(d, "name");
        if (meta->name != NULL && !kw_valid_dns_subdomain(meta->name)) {
            kw_dec_error(d, where,
                         "\"%s\" is not a valid name (lower-case letters, digits, '-' "
                         "and '.', starting and ending with a letter or digit)",
                         meta->name);
            meta->name = NULL;
        }
        pop(d, nm);
        const char *ns = get_string(d, m, "namespace", false, KW_MAX_NAMESPACE_LEN, &where);
        if (ns != NULL) {
            nm = push(d, "namespace");
            if (!namespaced)
                kw_dec_error(d, where, "this kind has no namespace");
            else if (!kw_valid_dns_label(ns))
                kw_dec_error(d, where, "\"%s\" is not a valid namespace", ns);
            else
                meta->ns = ns;
            pop(d, nm);
        }
        if (!d->strict || d->file == NULL) {
            const struct kw_node *n;
            if ((n = kw_node_get(m, "uid")) != NULL && n->type == KW_NODE_STRING)
                meta->uid = kw_arena_strndup(d->a, n->str, n->len);
            if ((n = kw_node_get(m, "resourceVersion")) != NULL && n->type == KW_NODE_STRING)
                meta->resource_version = kw_arena_strndup(d->a, n->str, n->len);
            if ((n = kw_node_get(m, "creationTimestamp")) != NULL && n->type == KW_NODE_STRING)
                meta->creation_timestamp = kw_arena_strndup(d->a, n->str, n->len);
            if ((n = kw_node_get(m, "generation")) != NULL && n->type == KW_NODE_INT)
                meta->generation = n->i;
        }
    }
    pop(d, mark);
}

static char *object_name(struct kw_arena *a, enum kw_kind kind, const struct kw_node *doc)
{
    const struct kw_node *meta = kw_node_get(doc, "metadata");
    const struct kw_node *name = kw_node_get(meta, "name");
    const struct kw_node *ns = kw_node_get(meta, "namespace");
    const char *n = name != NULL && name->type == KW_NODE_STRING ? name->str : "(unnamed)";
    const char *s = ns != NULL && ns->type == KW_NODE_STRING ? ns->str : "default";
    /* "Kind/namespace/name" (DataPlane: "Kind/name"), as "%s/%.63s/%.100s" would print it,
     * without a printf per decoded object */
    const char *k = kw_kind_name(kind);
    size_t kl = strlen(k), sl = kind == KW_KIND_DATAPLANE ? 0 : strnlen(s, 63),
           nl = strnlen(n, 100);
    char *out = kw_arena_alloc(a, kl + sl + nl + 3);
    if (out == NULL)
        return NULL;
    char *p = out;
    memcpy(p, k, kl);
    p += kl;
    *p++ = '/';
    if (kind != KW_KIND_DATAPLANE) {
        memcpy(p, s, sl);
        p += sl;
        *p++ = '/';
    }
    memcpy(p, n, nl);
    p[nl] = '\0';
    return out;
}

int kw_decode_document(struct kw_arena *a, const struct kw_node *doc, const char *file, bool strict,
                       struct kw_diag *diag, struct kw_decoded *out)
{
    static const char *const kinds[] = {"LLMBackend", "LLMRoute",    "Secret",
                                        "DataPlane",  "LLMConsumer", NULL};
    static const char *const crd_fields[] = {"apiVersion", "kind", "metadata", "spec", NULL};
    static const char *const secret_fields[] = {"apiVersion", "kind",       "metadata",  "type",
                                                "data",       "stringData", "immutable", NULL};
    static const char *const status_only[] = {"status", NULL};
    struct kw_dec d = {.a = a, .diag = diag, .file = file, .strict = strict};
    memset(out, 0, sizeof(*out));
    if (doc->type != KW_NODE_MAP) {
        kw_dec_error(&d, doc, "a document must be a map with apiVersion and kind, not %s",
                     a_type(doc->type));
        return KW_ERROR;
    }
    const struct kw_node *kn = kw_node_get(doc, "kind");
    const struct kw_node *an = kw_node_get(doc, "apiVersion");
    if (kn == NULL || kn->type != KW_NODE_STRING) {
        size_t m = push(&d, "kind");
        kw_dec_error(&d, kn != NULL ? kn : doc,
                     "required: one of LLMBackend, LLMRoute, LLMConsumer, Secret, DataPlane");
        pop(&d, m);
        return KW_ERROR;
    }
    int kind = -1;
    for (int i = 0; kinds[i] != NULL; i++)
        if (strcmp(kn->str, kinds[i]) == 0)
            kind = i;
    if (kind < 0) {
        const char *hint = suggest(kn->str, kinds);
        size_t m = push(&d, "kind");
        kw_dec_error(&d, kn,
                     "unknown kind \"%.64s\"%s%s%s; knoway reads LLMBackend, LLMRoute, "
                     "Secret and DataPlane",
                     kn->str, hint ? " (did you mean \"" : "", hint ? hint : "",
                     hint ? "\"?)" : "");
        pop(&d, m);
        return KW_ERROR;
    }
    out->kind = (enum kw_kind)kind;
    d.object = object_name(a, out->kind, doc);
    if (d.object == NULL)
        return KW_ERROR;
    const char *want_api = out->kind == KW_KIND_SECRET ? "v1" : KW_API_VERSION;
    size_t am = push(&d, "apiVersion");
    if (an == NULL)
        kw_dec_error(&d, doc, "required field is missing (\"%s\")", want_api);
    else if (an->type != KW_NODE_STRING || strcmp(an->str, want_api) != 0)
        kw_dec_error(&d, an, "must be \"%s\" for kind %s", want_api, kn->str);
    pop(&d, am);

    struct kw_meta *meta = NULL;
    switch (out->kind) {
    case KW_KIND_LLMBACKEND:
        out->backend = kw_arena_alloc(a, sizeof(*out->backend));
        if (out->backend == NULL)
            return KW_ERROR;
        meta = &out->backend->meta;
        break;
    case KW_KIND_LLMROUTE:
        out->route = kw_arena_alloc(a, sizeof(*out->route));
        if (out->route == NULL)
            return KW_ERROR;
        meta = &out->route->meta;
        break;
    case KW_KIND_SECRET:
        out->secret = kw_arena_alloc(a, sizeof(*out->secret));
        if (out->secret == NULL)
            return KW_ERROR;
        meta = &out->secret->meta;
        break;
    case KW_KIND_DATAPLANE:
        out->dataplane = kw_arena_alloc(a, sizeof(*out->dataplane));
        if (out->dataplane == NULL)
            return KW_ERROR;
        kw_dataplane_defaults(out->dataplane);
        meta = &out->dataplane->meta;
        break;
    case KW_KIND_LLMCONSUMER:
        out->consumer = kw_arena_alloc(a, sizeof(*out->consumer));
        if (out->consumer == NULL)
            return KW_ERROR;
        memset(out->consumer, 0, sizeof(*out->consumer));
        meta = &out->consumer->meta;
        break;
    }
    check_fields(&d, doc, out->kind == KW_KIND_SECRET ? secret_fields : crd_fields, status_only);
    decode_meta(&d, doc, meta, out->kind != KW_KIND_DATAPLANE);
    meta->file = file != NULL ? kw_arena_strdup(a, file) : NULL;
    meta->line = doc->line;
    meta->col = doc->col;

    if (out->kind == KW_KIND_SECRET) {
        decode_secret(&d, doc, out->secret);
        out->secret->valid = d.errors == 0;
        out->errors = d.errors;
        return KW_OK;
    }
    size_t sm;
    const struct kw_node *spec = get_map(&d, doc, "spec", out->kind != KW_KIND_DATAPLANE, &sm);
    if (spec != NULL) {
        switch (out->kind) {
        case KW_KIND_LLMBACKEND:
            kw_decode_backend_spec(&d, spec, out->backend);
            break;
        case KW_KIND_LLMROUTE:
            kw_decode_route_spec(&d, spec, out->route);
            break;
        case KW_KIND_DATAPLANE:
            decode_dataplane(&d, spec, out->dataplane);
            break;
        case KW_KIND_LLMCONSUMER:
            kw_decode_consumer_spec(&d, spec, out->consumer);
            break;
        default:
            break;
        }
    }
    pop(&d, sm);
    if (out->consumer != NULL)
        out->consumer->valid = d.errors == 0;
    if (out->backend != NULL)
        out->backend->valid = d.errors == 0;
    if (out->route != NULL)
        out->route->valid = d.errors == 0;
    out->errors = d.errors;
    return KW_OK;
}
