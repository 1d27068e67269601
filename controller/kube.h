/* knoway controller: a small Kubernetes REST client over libcurl.
 *
 * Configuration comes from a kubeconfig file (token, tokenFile, client certificate and
 * key as files or data, certificate-authority as file or data, insecure-skip-tls-verify,
 * current-context, namespace) or from inside a pod (KUBERNETES_SERVICE_HOST/PORT and the
 * service-account folder: token, ca.crt, namespace). A token read from a file is re-read
 * every minute and after a 401, so projected (rotating) tokens keep working.
 *
 * Any thread may call the request functions; each call uses its own easy handle and the
 * handles share connections, DNS and TLS sessions. Requests other than watches pass a
 * client-side rate limit (token bucket, qps and burst). */
#ifndef CTL_KUBE_H
#define CTL_KUBE_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knoway/buf.h"

#define CTL_SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"

struct ctl_kube_config {
    char *server;     /* "https://host:port", no trailing slash */
    char *token;      /* static bearer token, or NULL */
    char *token_file; /* re-read every minute and on 401, or NULL */
    char *ca_file;
    char *ca_data; /* PEM bytes */
    size_t ca_len;
    char *cert_file, *key_file;
    char *cert_data, *key_data; /* PEM bytes */
    size_t cert_len, key_len;
    bool insecure;
    char *ns;     /* the context's namespace ("default" when unset) */
    char *source; /* where the configuration came from, for messages */
};

/* Load a kubeconfig: path, else $KUBECONFIG (first of a ':' list), else ~/.kube/config.
 * Relative file names inside resolve against the kubeconfig's folder. KW_OK, or KW_ERROR
 * with a message naming the file and field in err. */
int ctl_kube_config_load_file(struct ctl_kube_config *c, const char *path, char *err,
                              size_t errlen);

/* In-cluster: KUBERNETES_SERVICE_HOST/PORT and the files in sa_dir (CTL_SA_DIR). */
int ctl_kube_config_in_cluster(struct ctl_kube_config *c, const char *sa_dir, char *err,
                               size_t errlen);

void ctl_kube_config_cleanup(struct ctl_kube_config *c);

struct ctl_kube {
    struct ctl_kube_config cfg;
    CURLSH *share;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];
    pthread_mutex_t mu; /* guards the fields below */
    char *token;        /* current token (from cfg.token or the file) */
    int64_t token_read_ms;
    double qps, burst, tokens;
    int64_t bucket_ms;
};

/* Takes ownership of cfg. KW_OK or KW_ERROR (a token file that cannot be read). */
int ctl_kube_init(struct ctl_kube *k, struct ctl_kube_config *cfg, double qps, double burst,
                  char *err, size_t errlen);
void ctl_kube_cleanup(struct ctl_kube *k);

/* One request: path is below the server ("/apis/..."); body may be NULL. The response body
 * goes to resp (limited by its max). Waits for the rate limit first. Returns the HTTP
 * status, or 0 when no response came (the curl error is in err). A 401 re-reads the token
 * file and retries once. */
long ctl_kube_request(struct ctl_kube *k, const char *method, const char *path,
                      const char *content_type, const char *body, size_t len, struct kw_buf *resp,
                      char *err, size_t errlen);
/* The same with the whole request (rate-limit wait aside) bounded by timeout_ms (the
 * default is 30 s): leader election must not wait longer than its renew deadline. */
long ctl_kube_request_within(struct ctl_kube *k, long timeout_ms, const char *method,
                             const char *path, const char *content_type, const char *body,
                             size_t len, struct kw_buf *resp, char *err, size_t errlen);

/* An easy handle set up for path (TLS, authentication, shared connections) for callers
 * that stream the response themselves (watches). *headers must be freed with
 * curl_slist_free_all after the transfer. NULL on out-of-memory. */
CURL *ctl_kube_easy(struct ctl_kube *k, const char *path, struct curl_slist **headers);

/* After a 401 on a handle of ctl_kube_easy: re-read the token file. */
void ctl_kube_unauthorized(struct ctl_kube *k);

/* A token file's content without trailing white space (malloc'd), or NULL with errno. */
char *ctl_read_token(const char *path);

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t ctl_now_ms(void);

#endif
