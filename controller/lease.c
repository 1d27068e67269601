/* Leader election with a Lease (see lease.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "lease.h"

void ctl_micro_time(char out[32])
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%06ldZ", (long)tv.tv_usec);
}

void ctl_rfc3339(char out[32])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static const char *jstr(const struct kw_node *m, const char *k1, const char *k2)
{
    const struct kw_node *v = kw_node_get(kw_node_get(m, k1), k2);
    return v != NULL && v->type == KW_NODE_STRING ? v->str : "";
}

static int64_t jint(const struct kw_node *m, const char *k1, const char *k2)
{
    const struct kw_node *v = kw_node_get(kw_node_get(m, k1), k2);
    return v != NULL && v->type == KW_NODE_INT ? v->i : 0;
}

/* The Lease object as we write it. */
static void lease_body(struct ctl_lease *l, struct kw_buf *b, const char *rv, const char *holder,
                       const char *acquire, int64_t transitions, int duration)
{
    char now[32];
    ctl_micro_time(now);
    kw_buf_reset(b);
    kw_buf_puts(b, "{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\",\"metadata\":{"
                   "\"name\":");
    kw_json_write_string(b, l->name, strlen(l->name));
    kw_buf_puts(b, ",\"namespace\":");
    kw_json_write_string(b, l->ns, strlen(l->ns));
    if (rv != NULL) {
        kw_buf_puts(b, ",\"resourceVersion\":");
        kw_json_write_string(b, rv, strlen(rv));
    }
    kw_buf_puts(b, "},\"spec\":{\"holderIdentity\":");
    kw_json_write_string(b, holder, strlen(holder));
    kw_buf_printf(b,
                  ",\"leaseDurationSeconds\":%d,\"acquireTime\":\"%s\",\"renewTime\":\"%s\","
                  "\"leaseTransitions\":%lld}}",
                  duration, acquire[0] != '\0' ? acquire : now, now, (long long)transitions);
}

static void set_leader(struct ctl_lease *l, bool on, const char *why)
{
    if (atomic_exchange(&l->leader, on) == on)
        return;
    if (on)
        atomic_fetch_add(&l->acquired, 1);
    kw_log(on ? KW_LOG_INFO : KW_LOG_WARN,
           on ? "leader election: leading" : "leader election: following", "id", l->id, "lease",
           l->name, "why", why, NULL);
    if (l->on_change != NULL)
        l->on_change(l->ud, on);
}

/* Every Lease request ends within a quarter of the renew deadline, and a leader's ends
 * before its deadline: a hung API call may not keep a leader that can no longer renew
 * (another replica may take over once leaseDuration passes) writing status. */
static long lease_request(struct ctl_lease *l, const char *method, const char *path,
                          struct kw_buf *body, struct kw_buf *resp, char *err, size_t errlen)
{
    int64_t budget = l->renew_deadline_ms / 4;
    if (atomic_load(&l->leader)) {
        int64_t left = l->renewed_ms + l->renew_deadline_ms - ctl_now_ms();
        if (left < budget)
            budget = left;
    }
    if (budget < 100)
        budget = 100;
    return ctl_kube_request_within(
        l->kube, (long)budget, method, path, body != NULL ? "application/json" : NULL,
        body != NULL ? body->data : NULL, body != NULL ? body->len : 0, resp, err, errlen);
}

static void attempt(struct ctl_lease *l, struct kw_buf *resp, struct kw_buf *body)
{
    char path[512], err[256];
    snprintf(path, sizeof(path), "/apis/coordination.k8s.io/v1/namespaces/%s/leases", l->ns);
    size_t coll = strlen(path);
    snprintf(path + coll, sizeof(path) - coll, "/%s", l->name);
    long st = lease_request(l, "GET", path, NULL, resp, err, sizeof(err));
    int64_t now = ctl_now_ms();
    if (st == 404) {
        lease_body(l, body, NULL, l->id, "", 0, l->duration_s);
        path[coll] = '\0';
        st = lease_request(l, "POST", path, body, resp, err, sizeof(err));
        if (st == 201 || st == 200) {
            l->renewed_ms = now;
            set_leader(l, true, "created the Lease");
        }
        return;
    }
    if (st != 200) {
        kw_log(KW_LOG_WARN, "leader election: cannot read the Lease", "error", err, NULL);
        return;
    }
    struct kw_arena *a = kw_arena_new(1u << 20);
    struct kw_node *root;
    if (a == NULL || kw_json_parse(a, resp->data, resp->len, &root, err, sizeof(err)) != KW_OK) {
        kw_arena_free(a);
        return;
    }
    const char *holder = jstr(root, "spec", "holderIdentity");
    const char *renew = jstr(root, "spec", "renewTime");
    const char *acquire = jstr(root, "spec", "acquireTime");
    char rv[128];
    snprintf(rv, sizeof(rv), "%s", jstr(root, "metadata", "resourceVersion"));
    int64_t transitions = jint(root, "spec", "leaseTransitions");
    int64_t duration = jint(root, "spec", "leaseDurationSeconds");
    if (duration <= 0)
        duration = l->duration_s;
    if (strcmp(holder, l->observed_holder) != 0 || strcmp(renew, l->observed_renew) != 0) {
        snprintf(l->observed_holder, sizeof(l->observed_holder), "%s", holder);
        snprintf(l->observed_renew, sizeof(l->observed_renew), "%s", renew);
        l->observed_ms = now;
    }
    bool mine = strcmp(holder, l->id) == 0;
    bool expired = holder[0] == '\0' || now - l->observed_ms > duration * 1000;
    if (mine || expired) {
        char acq[64];
        snprintf(acq, sizeof(acq), "%s", mine ? acquire : "");
        lease_body(l, body, rv, l->id, acq, mine ? transitions : transitions + 1, l->duration_s);
        st = lease_request(l, "PUT", path, body, resp, err, sizeof(err));
        if (st == 200) {
            l->renewed_ms = now;
            set_leader(l, true, mine ? "renewed" : "took over an expired Lease");
        } else if (st == 409) {
            set_leader(l, false, "another replica updated the Lease first");
        } else {
            kw_log(KW_LOG_WARN, "leader election: cannot update the Lease", "error", err, NULL);
        }
    } else {
        set_leader(l, false, "the Lease is held by another replica");
    }
    kw_arena_free(a);
}

static void release(struct ctl_lease *l, struct kw_buf *resp, struct kw_buf *body)
{
    char path[512], err[256];
    snprintf(path, sizeof(path), "/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s", l->ns,
             l->name);
    if (lease_request(l, "GET", path, NULL, resp, err, sizeof(err)) != 200)
        return;
    struct kw_arena *a = kw_arena_new(1u << 20);
    struct kw_node *root;
    if (a != NULL && kw_json_parse(a, resp->data, resp->len, &root, err, sizeof(err)) == KW_OK &&
        strcmp(jstr(root, "spec", "holderIdentity"), l->id) == 0) {
        char rv[128];
        snprintf(rv, sizeof(rv), "%s", jstr(root, "metadata", "resourceVersion"));
        lease_body(l, body, rv, "", "", jint(root, "spec", "leaseTransitions"), 1);
        if (lease_request(l, "PUT", path, body, resp, err, sizeof(err)) == 200)
            kw_log(KW_LOG_INFO, "leader election: released the Lease", "id", l->id, NULL);
    }
    kw_arena_free(a);
}

static void *lease_main(void *arg)
{
    struct ctl_lease *l = arg;
    struct kw_buf resp, body;
    kw_buf_init(&resp, 1u << 20);
    kw_buf_init(&body, 64 * 1024);
    while (!atomic_load(&l->stop)) {
        attempt(l, &resp, &body);
        if (atomic_load(&l->leader) && ctl_now_ms() - l->renewed_ms > l->renew_deadline_ms)
            set_leader(l, false, "could not renew within the renew deadline");
        for (int t = 0; t < l->retry_ms && !atomic_load(&l->stop); t += 50)
            usleep(50000);
    }
    if (atomic_load(&l->leader)) {
        set_leader(l, false, "stopping");
        release(l, &resp, &body);
    }
    kw_buf_cleanup(&resp);
    kw_buf_cleanup(&body);
    return NULL;
}

int ctl_lease_start(struct ctl_lease *l)
{
    if (l->duration_s == 0)
        l->duration_s = 15;
    if (l->renew_deadline_ms == 0)
        l->renew_deadline_ms = 10000;
    if (l->retry_ms == 0)
        l->retry_ms = 2000;
    if (pthread_create(&l->thread, NULL, lease_main, l) != 0)
        return KW_ERROR;
    l->running = true;
    return KW_OK;
}

void ctl_lease_stop(struct ctl_lease *l)
{
    if (!l->running)
        return;
    atomic_store(&l->stop, true);
    pthread_join(l->thread, NULL);
    l->running = false;
}
