/* knoway: address ranges (CIDR) for listener access rules, such as who may read /debug. */
#ifndef KNOWAY_NET_H
#define KNOWAY_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct kw_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    unsigned bits;
};

/* "10.0.0.0/8", "::1/128", or an address alone (a single host). KW_OK or KW_ERROR. */
int kw_cidr_parse(const char *s, struct kw_cidr *out);

/* Whether sa (IPv4, IPv6, or IPv4-mapped IPv6) is in one of the n ranges. */
bool kw_cidr_match(const struct kw_cidr *ranges, size_t n, const struct sockaddr *sa);

/* A listener's address as both binaries take it: "host:port", "[v6]:port" or ":port" (every
 * address), the host a name or a literal, into *ss (*len its length). KW_OK or KW_ERROR. */
int kw_listen_address(const char *addr, struct sockaddr_storage *ss, socklen_t *len);

/* An IPv4 or IPv6 address (no brackets, no port) into *ss; false when s is neither. */
bool kw_addr_parse(const char *s, struct sockaddr_storage *ss);

/* The host of an absolute URL ("https://HOST:port/path", "http://[::1]/"), without brackets
 * or port, lower-cased, into out (len bytes). false when u has no scheme or the host does
 * not fit. */
bool kw_url_host(const char *u, char *out, size_t len);

/* Whether u's host is a loopback address (127.0.0.0/8, ::1) or "localhost". */
bool kw_url_host_is_loopback(const char *u);

/* The default for debug endpoints: loopback only (127.0.0.0/8 and ::1). */
extern const struct kw_cidr kw_cidr_loopback[2];

#endif
