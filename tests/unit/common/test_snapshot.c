#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/config.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "testutil.h"

#define TEST_KEY "installation-secret"

#define SECRET                                                                                     \
    "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: ml}\n"                   \
    "stringData: {openai: sk-123, unused: zzz}\n"
#define BACKENDS                                                                                   \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: oai, "           \
    "namespace: ml}\nspec:\n  provider: OpenAI\n  modelName: gpt-4o\n"                             \
    "  credentials: {secretRef: {name: keys, key: openai}}\n"                                      \
    "  params: {defaults: {temperature: 0.5, n: 1}, remove: [user]}\n"                             \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: vllm, "          \
    "namespace: ml}\nspec:\n  provider: vLLM\n  upstream: {serviceRef: {name: vllm, port: "        \
    "8000}}\n"
#define ROUTE                                                                                      \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: chat, "            \
    "namespace: ml}\nspec:\n  match: {models: [\"gpt*\"]}\n  backendRefs:\n"                       \
    "    - {name: vllm, weight: 3}\n    - {name: oai, priority: 1}\n  timeout: 2m\n"

/* The credential digest as documented (docs/snapshot.md), computed here independently:
 * HMAC-SHA256(key = HMAC-SHA256("knoway snapshot credential digest key", secret), value). */
static void expected_digest(const char *value, char out[KW_CREDENTIAL_DIGEST_LEN + 1])
{
    static const char label[] = "knoway snapshot credential digest key";
    unsigned char key[32], md[32];
    unsigned int n;
    HMAC(EVP_sha256(), label, sizeof(label) - 1, (const unsigned char *)TEST_KEY, strlen(TEST_KEY),
         key, &n);
    HMAC(EVP_sha256(), key, 32, (const unsigned char *)value, strlen(value), md, &n);
    strcpy(out, "hmac-sha256:");
    for (int i = 0; i < 32; i++)
        sprintf(out + 12 + 2 * i, "%02x", md[i]);
}

static struct kw_snapshot *build(const char *yaml, struct kw_diag *diag)
{
    struct kw_config *cfg = kw_config_new();
    kw_config_add_yaml(cfg, "t.yaml", yaml, strlen(yaml));
    kw_config_check(cfg);
    struct kw_snapshot *s = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, diag);
    kw_config_free(cfg);
    return s;
}

static char *text_of(const struct kw_snapshot *s)
{
    struct kw_buf b;
    kw_buf_init(&b, 1 << 24);
    assert_int_equal(kw_snapshot_serialize(s, &b), KW_OK);
    return b.data;
}

static void test_build_and_round_trip(void **state)
{
    (void)state;
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s = build(SECRET BACKENDS ROUTE, &diag);
    assert_non_null(s);
    assert_int_equal(kw_diag_count(&diag), 0);
    assert_int_equal(s->nbackends, 2);
    assert_int_equal(s->nroutes, 1);
    assert_int_equal(s->ncredentials, 1); /* only the key a backend references */
    assert_string_equal(kw_snapshot_credential(s, "ml", "keys", "openai")->value, "sk-123");
    /* serviceRef resolved to an endpoint with the provider's API root */
    assert_null(s->backends[1]->upstream.service_ref.name);
    assert_string_equal(s->backends[1]->upstream.endpoints[0].url, "http://vllm.ml.svc:8000/v1");
    assert_ptr_equal(s->routes[0]->refs[0].backend, s->backends[1]);

    char *text = text_of(s);
    /* the exact canonical document: keys sorted, defaults filled in, secret base64 */
    const char *want_fmt =
        "{\"backends\":[{\"name\":\"oai\",\"namespace\":\"ml\",\"spec\":{\"credentials\":"
        "{\"secretRef\":{\"key\":\"openai\",\"name\":\"keys\"}},\"modelName\":\"gpt-4o\","
        "\"params\":{\"defaults\":{\"n\":1,\"temperature\":0.5},\"remove\":[\"user\"]},"
        "\"provider\":\"OpenAI\",\"upstream\":{\"baseURL\":\"https://api.openai.com/v1\","
        "\"connectTimeout\":\"10s\",\"protocol\":\"HTTP/"
        "1.1\"}}},{\"name\":\"vllm\",\"namespace\":\"ml\",\"spec\":"
        "{\"provider\":\"vLLM\",\"upstream\":{\"connectTimeout\":\"10s\",\"endpoints\":"
        "[{\"url\":\"http://vllm.ml.svc:8000/v1\",\"weight\":1}],\"protocol\":\"HTTP/"
        "1.1\"}}}],\"credentials\":"
        "[{\"data\":\"c2stMTIz\",\"digest\":\"%s\",\"key\":\"openai\",\"name\":\"keys\","
        "\"namespace\":\"ml\"}],"
        "\"routes\":[{\"name\":\"chat\",\"namespace\":\"ml\",\"spec\":{\"backendRefs\":"
        "[{\"name\":\"vllm\",\"priority\":0,\"weight\":3},{\"name\":\"oai\",\"priority\":1,"
        "\"weight\":1}],\"match\":{\"models\":[\"gpt*\"]},\"streamIdleTimeout\":\"1m\","
        "\"timeout\":\"2m\"}}],\"version\":\"";
    char digest[KW_CREDENTIAL_DIGEST_LEN + 1];
    expected_digest("sk-123", digest);
    char want[4096];
    const char *hole = strstr(want_fmt, "%s");
    snprintf(want, sizeof(want), "%.*s%s%s", (int)(hole - want_fmt), want_fmt, digest, hole + 2);
    assert_memory_equal(text, want, strlen(want));
    assert_string_equal(text + strlen(want) + strlen(s->version), "\"}");

    /* parse(serialize(s)) serialises to the same bytes and has the same version */
    struct kw_snapshot *p = kw_snapshot_parse(text, strlen(text), &diag);
    assert_non_null(p);
    char *again = text_of(p);
    assert_string_equal(again, text);
    assert_string_equal(p->version, s->version);
    free(again);
    free(text);
    kw_snapshot_unref(p);
    kw_snapshot_unref(s);
    kw_diag_cleanup(&diag);
}

static void test_version_is_content_hash(void **state)
{
    (void)state;
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *a = build(SECRET BACKENDS ROUTE, &diag);
    /* the same resources in another order: same version (every replica agrees) */
    struct kw_snapshot *b = build(ROUTE BACKENDS SECRET, &diag);
    /* a Secret value change changes the version */
    struct kw_snapshot *c =
        build("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: ml}\n"
              "stringData: {openai: sk-456}\n" BACKENDS ROUTE,
              &diag);
    /* a key nobody references does not */
    struct kw_snapshot *d =
        build("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: ml}\n"
              "stringData: {openai: sk-123, unused: other}\n" BACKENDS ROUTE,
              &diag);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_non_null(d);
    assert_string_equal(a->version, b->version);
    assert_string_not_equal(a->version, c->version);
    assert_string_equal(a->version, d->version);
    assert_int_equal(strlen(a->version), KW_SNAPSHOT_VERSION_LEN);
    kw_snapshot_unref(a);
    kw_snapshot_unref(b);
    kw_snapshot_unref(c);
    kw_snapshot_unref(d);
    kw_diag_cleanup(&diag);
}

/* Regression: the version was an unsalted SHA-256 over a document holding credentials, so
 * the published version plus the redacted /debug/config let anyone confirm a guessed key
 * offline. The version covers only a keyed digest of each value now: recomputing it with
 * the right guess but without the installation's key gives nothing. */
static void test_version_cannot_confirm_a_guess(void **state)
{
    (void)state;
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s = build(SECRET BACKENDS ROUTE, &diag);
    char *text = text_of(s);
    /* the attacker's view: the document with the value redacted, and the version */
    char *v = strstr(text, ",\"version\":\"");
    *v = '\0';
    char *redacted = malloc(strlen(text) + 64);
    char *data = strstr(text, "\"data\":\"c2stMTIz\",");
    assert_non_null(data);
    *data = '\0';
    /* guess right ("sk-123"), in both the old scheme (value in the hashed document) and the
     * new one (data left out, digest kept): neither reproduces the version */
    const char *variants[] = {"\"data\":\"c2stMTIz\",", ""};
    for (int i = 0; i < 2; i++) {
        sprintf(redacted, "%s%s%s}", text, variants[i], data + strlen("\"data\":\"c2stMTIz\","));
        unsigned char md[32];
        SHA256((const unsigned char *)redacted, strlen(redacted), md);
        char hexv[72] = "sha256:";
        for (int k = 0; k < 32; k++)
            sprintf(hexv + 7 + 2 * k, "%02x", md[k]);
        if (i == 0)
            assert_string_not_equal(hexv, s->version);
        else /* only with the digest, which needs the installation's key */
            assert_string_equal(hexv, s->version);
    }
    /* another installation (another key): same resources, another version */
    kw_snapshot_set_key("other", 5);
    struct kw_snapshot *o = build(SECRET BACKENDS ROUTE, &diag);
    assert_string_not_equal(o->version, s->version);
    kw_snapshot_set_key(TEST_KEY, strlen(TEST_KEY));
    free(redacted);
    free(text);
    kw_snapshot_unref(o);
    kw_snapshot_unref(s);
    kw_diag_cleanup(&diag);
}

/* What the controller sends (kw_snapshot_write, never parsed there) is byte for byte what a
 * data plane parses and serialises again, and its summary names what the snapshot holds. */
static void test_write_is_what_build_parses(void **state)
{
    (void)state;
    static const char yaml[] = SECRET BACKENDS ROUTE
        "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: a-old, "
        "namespace: ml}\nspec:\n  match: {models: "
        "[m]}\n  backendRefs: [{name: vllm}]\n"
        "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\nmetadata: {name: team, "
        "namespace: ml}\nspec:\n  apiKeys: [{secretRef: {name: keys, key: unused}}]\n";
    struct kw_config *cfg = kw_config_new();
    kw_config_add_yaml(cfg, "t.yaml", yaml, strlen(yaml));
    kw_config_check(cfg);
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_buf text;
    kw_buf_init(&text, 1 << 24);
    struct kw_snapshot_summary sum;
    assert_int_equal(kw_snapshot_write(cfg, kw_service_resolve_dns, NULL, &diag, &text, &sum, NULL),
                     KW_OK);
    struct kw_snapshot *p = kw_snapshot_parse(text.data, text.len, &diag);
    assert_non_null(p);
    assert_string_equal(p->version, sum.version);
    char *again = text_of(p);
    assert_int_equal(strlen(again), text.len);
    assert_memory_equal(again, text.data, text.len);
    assert_int_equal(sum.nbackends, p->nbackends);
    for (size_t i = 0; i < p->nbackends; i++)
        assert_string_equal(sum.backends[i].name, p->backends[i]->meta.name);
    for (size_t i = 0; i < sum.nbackends; i++) /* positions in the config */
        assert_string_equal(cfg->backends[sum.backends[i].order]->meta.name, sum.backends[i].name);
    assert_int_equal(sum.nroutes, 2);
    /* oldest first (in a file: the first document), not by name */
    assert_string_equal(sum.routes[0].name, "chat");
    assert_string_equal(sum.routes[1].name, "a-old");
    assert_int_equal(sum.nconsumers, 1);
    assert_string_equal(sum.consumers[0].name, "team");
    assert_int_equal(p->nconsumers, 1);
    /* kw_snapshot_build is the same write, parsed */
    struct kw_snapshot *b = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, &diag);
    assert_string_equal(b->version, sum.version);
    kw_snapshot_unref(b);
    kw_snapshot_summary_cleanup(&sum);
    kw_snapshot_unref(p);
    free(again);
    kw_buf_cleanup(&text);
    kw_diag_cleanup(&diag);
    kw_config_free(cfg);
}

/* Regression: API objects created in the same second were ordered by the position they
 * were added in, which is the informer's hash order: two controller replicas could order
 * the routes differently and disagree on the version. Equal creation times now fall back
 * to namespace/name. */
static void test_same_second_routes_order_by_name(void **state)
{
    (void)state;
    static const char *const objs[] = {
        "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMBackend\",\"metadata\":"
        "{\"name\":\"b\",\"namespace\":\"ml\"},\"spec\":{\"provider\":\"vLLM\",\"upstream\":"
        "{\"baseURL\":\"http://v/v1\"}}}",
        "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMRoute\",\"metadata\":"
        "{\"name\":\"zeta\",\"namespace\":\"ml\",\"creationTimestamp\":\"2026-01-01T00:00:00Z\"},"
        "\"spec\":{\"match\":{\"models\":[\"m*\"]},\"backendRefs\":[{\"name\":\"b\"}]}}",
        "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMRoute\",\"metadata\":"
        "{\"name\":\"alpha\",\"namespace\":\"ml\",\"creationTimestamp\":\"2026-01-01T00:00:00Z\"},"
        "\"spec\":{\"match\":{\"models\":[\"m*\"]},\"backendRefs\":[{\"name\":\"b\"}]}}",
    };
    char version[2][KW_SNAPSHOT_VERSION_LEN + 1];
    for (int order = 0; order < 2; order++) {
        struct kw_config *cfg = kw_config_new();
        kw_config_add_json(cfg, objs[0], strlen(objs[0]));
        for (int i = 0; i < 2; i++) {
            const char *o = objs[1 + (order == 0 ? i : 1 - i)];
            kw_config_add_json(cfg, o, strlen(o));
        }
        kw_config_check(cfg);
        struct kw_diag diag;
        kw_diag_init(&diag);
        struct kw_snapshot *snap = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, &diag);
        assert_non_null(snap);
        assert_int_equal(snap->nroutes, 2);
        strcpy(version[order], snap->version);
        char *text = text_of(snap);
        assert_true(strstr(text, "\"alpha\"") < strstr(text, "\"zeta\"")); /* listed first */
        free(text);
        kw_snapshot_unref(snap);
        kw_diag_cleanup(&diag);
        kw_config_free(cfg);
    }
    assert_string_equal(version[0], version[1]);
}

static void test_invalid_left_out(void **state)
{
    (void)state;
    /* As the controller sees it: one backend invalid (bad secret ref). The route keeps its
     * other backend; a route whose only backend is invalid is left out and reported. */
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s = build(
        BACKENDS ROUTE
        "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: only-oai, "
        "namespace: ml}\nspec: {match: {models: [x]}, backendRefs: [{name: oai}]}\n",
        &diag);
    assert_non_null(s);
    assert_int_equal(s->nbackends, 1);
    assert_string_equal(s->backends[0]->meta.name, "vllm");
    assert_int_equal(s->nroutes, 1);
    assert_int_equal(s->routes[0]->nrefs, 1);
    struct kw_buf out;
    kw_buf_init(&out, 4096);
    kw_diag_format_all(&diag, &out);
    assert_string_equal(out.data, "t.yaml:28:1: LLMRoute/ml/only-oai: spec.backendRefs: no usable "
                                  "backend: the route is not programmed\n");
    kw_buf_cleanup(&out);
    kw_snapshot_unref(s);
    kw_diag_cleanup(&diag);
}

/* Regression: a Secret value with CR/LF went into upstream headers (injection), and the
 * trailing newline `kubectl create secret --from-file` leaves corrupted requests. */
static void test_header_credentials_checked(void **state)
{
    (void)state;
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s =
        build("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: ml}\n"
              "stringData: {openai: \"sk-123\\n\", evil: \"sk-1\\r\\nX-Injected: 1\", "
              "ca.crt: \"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\"}\n"
              "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: oai, "
              "namespace: ml}\nspec:\n  provider: OpenAI\n"
              "  credentials: {secretRef: {name: keys, key: openai}}\n"
              "  upstream: {tls: {caSecretRef: {name: keys}}}\n"
              "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: bad, "
              "namespace: ml}\nspec:\n  provider: OpenAI\n"
              "  credentials: {secretRef: {name: keys, key: evil}}\n",
              &diag);
    assert_non_null(s);
    /* one trailing newline trimmed; the CA keeps its newlines; the injecting key makes its
     * backend invalid, reported on it */
    assert_int_equal(s->nbackends, 1);
    assert_string_equal(s->backends[0]->meta.name, "oai");
    const struct kw_credential *c = kw_snapshot_credential(s, "ml", "keys", "openai");
    assert_int_equal(c->len, 6);
    assert_string_equal(c->value, "sk-123");
    c = kw_snapshot_credential(s, "ml", "keys", "ca.crt");
    assert_non_null(strstr(c->value, "\nMIIB\n"));
    assert_null(kw_snapshot_credential(s, "ml", "keys", "evil"));
    struct kw_buf out;
    kw_buf_init(&out, 4096);
    kw_diag_format_all(&diag, &out);
    assert_string_equal(out.data, "t.yaml:15:1: LLMBackend/ml/bad: spec.credentials: Secret "
                                  "\"keys\" key \"evil\" holds control characters "
                                  "(CR, LF, ...): it cannot be sent in an HTTP header\n");
    kw_buf_cleanup(&out);
    kw_snapshot_unref(s);
    kw_diag_cleanup(&diag);

    size_t len = 4;
    assert_int_equal(kw_credential_header_check("ab\r\n", &len), KW_DECLINED);
    assert_int_equal(len, 2);
    len = 3;
    assert_int_equal(kw_credential_header_check("a\nb", &len), KW_ERROR);
    len = 2;
    assert_int_equal(kw_credential_header_check("a\x7f", &len), KW_ERROR);
    len = 1;
    assert_int_equal(kw_credential_header_check("\n", &len), KW_DECLINED);
    assert_int_equal(len, 0);
}

static char *first_error(const char *json)
{
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s = kw_snapshot_parse(json, strlen(json), &diag);
    assert_null(s);
    struct kw_buf out;
    kw_buf_init(&out, 4096);
    assert_true(diag.n > 0);
    kw_diag_format(&diag.entries[0], &out);
    kw_diag_cleanup(&diag);
    return out.data;
}

static void test_parse_rejects(void **state)
{
    (void)state;
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s = build(SECRET BACKENDS ROUTE, &diag);
    char *text = text_of(s);

    /* tampered content: the version no longer matches */
    char *t = strdup(text);
    memcpy(strstr(t, "gpt-4o"), "gpt-4x", 6);
    char *e = first_error(t);
    assert_non_null(strstr(e, "snapshot: version: sha256:"));
    assert_non_null(strstr(e, "does not match the content"));
    free(e);
    free(t);

    e = first_error("{\"backends\":[],\"credentials\":[],\"routes\":[]}");
    assert_string_equal(e, "snapshot: missing field \"version\"");
    free(e);
    e = first_error(
        "{\"backends\":[],\"credentials\":[],\"routes\":[],\"version\":\"x\",\"extra\":1}");
    assert_string_equal(e, "snapshot: unknown field \"extra\"");
    free(e);
    e = first_error(
        "{\"backends\":[{\"name\":\"a\",\"namespace\":\"n\",\"spec\":{\"provider\":\"vLLM\","
        "\"upstream\":{\"serviceRef\":{\"name\":\"s\",\"port\":1}}}}],\"credentials\":[],"
        "\"routes\":[],\"version\":\"sha256:"
        "0000000000000000000000000000000000000000000000000000000000000000\"}");
    assert_string_equal(e, "LLMBackend/n/a: spec.upstream.serviceRef: a snapshot carries resolved "
                           "endpoints, not a serviceRef");
    free(e);
    e = first_error("[1");
    assert_non_null(strstr(e, "snapshot: invalid JSON at byte"));
    free(e);

    /* a snapshot whose header credential holds CR/LF (a controller that did not check, or a
     * cache file edited by hand) is refused: "sk\r\nX: 1" in base64 */
    t = strdup(text);
    char *data = strstr(t, "c2stMTIz");
    assert_non_null(data);
    memcpy(data, "c2sNClg6", 8);
    e = first_error(t);
    assert_non_null(strstr(e, "a credential sent in a header holds control characters"));
    free(e);
    free(t);

    free(text);
    kw_snapshot_unref(s);
    kw_diag_cleanup(&diag);
}

static void sha256_hex(const char *v, char out[65])
{
    unsigned char md[32];
    SHA256((const unsigned char *)v, strlen(v), md);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

static void test_consumers_carry_digests_only(void **state)
{
    (void)state;
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s = build(
        SECRET BACKENDS ROUTE
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: team-keys, namespace: ml}\n"
        "stringData: {a: key-alpha-0123456789, b: \"key-beta-0123456789\\n\"}\n"
        "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\nmetadata: {name: search, "
        "namespace: ml}\nspec:\n  apiKeys: [{secretRef: {name: team-keys}}, {secretRef: {name: "
        "team-keys, key: a}}]\n  attributes: {team: search}\n  models: [\"gpt*\"]\n",
        &diag);
    assert_non_null(s);
    assert_int_equal(s->nconsumers, 1);
    const struct kw_consumer *c = s->consumers[0];
    assert_string_equal(c->meta.name, "search");
    char ha[65], hb[65];
    sha256_hex("key-alpha-0123456789", ha);
    sha256_hex("key-beta-0123456789", hb); /* the trailing newline is not part of the key */
    assert_int_equal(c->nkey_hashes, 2);   /* "a" twice is one key */
    assert_string_equal(c->key_hashes[0], strcmp(ha, hb) < 0 ? ha : hb);
    assert_string_equal(c->key_hashes[1], strcmp(ha, hb) < 0 ? hb : ha);
    assert_string_equal(c->attributes[0].value, "search");
    assert_true(c->models[0].prefix);
    char *text = text_of(s);
    assert_null(strstr(text, "key-alpha-0123456789")); /* never in clear */
    assert_null(strstr(text, "a2V5LWFscGhh"));         /* nor in base64 */
    assert_non_null(strstr(text, ha));
    /* the text parses back to the same version */
    struct kw_snapshot *p = kw_snapshot_parse(text, strlen(text), &diag);
    assert_non_null(p);
    assert_string_equal(p->version, s->version);
    assert_int_equal(p->nconsumers, 1);
    kw_snapshot_unref(p);
    free(text);
    kw_snapshot_unref(s);
    /* without consumers the document has no "consumers": older data planes read it */
    s = build(SECRET BACKENDS ROUTE, &diag);
    text = text_of(s);
    assert_null(strstr(text, "consumers"));
    free(text);
    kw_snapshot_unref(s);
    kw_diag_cleanup(&diag);
}

static void test_refcount(void **state)
{
    (void)state;
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s = build(SECRET BACKENDS ROUTE, &diag);
    assert_ptr_equal(kw_snapshot_ref(s), s);
    kw_snapshot_unref(s);
    assert_int_equal(atomic_load(&s->refs), 1);
    kw_snapshot_unref(s); /* freed: ASan and valgrind check there is no leak */
    kw_snapshot_unref(NULL);
    kw_diag_cleanup(&diag);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_and_round_trip),
        cmocka_unit_test(test_version_is_content_hash),
        cmocka_unit_test(test_version_cannot_confirm_a_guess),
        cmocka_unit_test(test_write_is_what_build_parses),
        cmocka_unit_test(test_same_second_routes_order_by_name),
        cmocka_unit_test(test_invalid_left_out),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_header_credentials_checked),
        cmocka_unit_test(test_consumers_carry_digests_only),
        cmocka_unit_test(test_refcount),
    };
    kw_snapshot_set_key(TEST_KEY, strlen(TEST_KEY));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
