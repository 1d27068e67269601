#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/kw.h"
#include "knoway/net.h"

const struct kw_cidr kw_cidr_loopback[2] = {
    {.family = AF_INET, .addr = {127}, .bits = 8},
    {.family = AF_INET6, .addr = {[15] = 1}, .bits = 128},
};

int kw_cidr_parse(const char *s, struct kw_cidr *out)
{
    char host[64];
    const char *slash = strchr(s, '/');
    size_t hlen = slash != NULL ? (size_t)(slash - s) : strlen(s);
    if (hlen == 0 || hlen >= sizeof(host))
        return KW_ERROR;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    memset(out, 0, sizeof(*out));
    unsigned max;
    if (inet_pton(AF_INET, host, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, host, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return KW_ERROR;
    }
    out->bits = max;
    if (slash != NULL) {
        char *end;
        long b = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || b < 0 || b > (long)max)
            return KW_ERROR;
        out->bits = (unsigned)b;
    }
    return KW_OK;
}

static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    unsigned full = bits / 8, rest = bits % 8;
    if (memcmp(a, b, full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

bool kw_cidr_match(const struct kw_cidr *ranges, size_t n, const struct sockaddr *sa)
{
    unsigned char addr[16];
    int family;
    if (sa == NULL)
        return false;
    if (sa->sa_family == AF_INET) {
        family = AF_INET;
        memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            family = AF_INET;
            memcpy(addr, a6->s6_addr + 12, 4);
        } else {
            family = AF_INET6;
            memcpy(addr, a6->s6_addr, 16);
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (ranges[i].family == family && prefix_equal(ranges[i].addr, addr, ranges[i].bits))
            return true;
    return false;
}

bool kw_url_host(const char *u, char *out, size_t len)
{
    const char *p = strstr(u, "://");
    if (p == NULL || len == 0)
        return false;
    p += 3;
    const char *at = p + strcspn(p, "/?#");
    const char *cred = memchr(p, '@', (size_t)(at - p)); /* user:pass@host */
    if (cred != NULL)
        p = cred + 1;
    const char *end;
    if (*p == '[') {
        p++;
        end = strchr(p, ']');
        if (end == NULL)
            return false;
    } else {
        end = p + strcspn(p, ":/?#");
    }
    size_t n = (size_t)(end - p);
    if (n == 0 || n >= len)
        return false;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]);
    out[n] = '\0';
    return true;
}

bool kw_addr_parse(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &v4->sin_addr) == 1)
        v4->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, s, &v6->sin6_addr) == 1)
        v6->sin6_family = AF_INET6;
    else
        return false;
    return true;
}

bool kw_url_host_is_loopback(const char *u)
{
    char host[256];
    struct sockaddr_storage ss;
    if (!kw_url_host(u, host, sizeof(host)))
        return false;
    return strcmp(host, "localhost") == 0 ||
           (kw_addr_parse(host, &ss) &&
            kw_cidr_match(kw_cidr_loopback, 2, (const struct sockaddr *)&ss));
}

int kw_listen_address(const char *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof(host) || colon[1] == '\0')
        return KW_ERROR;
    const char *h = addr;
    size_t hlen = (size_t)(colon - addr);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']')
        h++, hlen -= 2;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    if (getaddrinfo(hlen > 0 ? host : NULL, colon + 1, &hints, &res) != 0)
        return KW_ERROR;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return KW_OK;
}
