/* LD_PRELOAD spy: records every call to libc's name resolution functions into the file
 * named by $VIGIL_RESOLVER_LOG, then forwards to the real function. The no-libc-resolver
 * test runs the real vigil binary under it and requires the file to stay empty. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void record(const char *fn, const char *name) {
    const char *path = getenv("VIGIL_RESOLVER_LOG");
    if (!path) return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    char buf[512];
    int n = snprintf(buf, sizeof buf, "pid=%d %s(%s)\n", (int)getpid(), fn, name ? name : "NULL");
    if (n > 0) (void)!write(fd, buf, (size_t)n);
    close(fd);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    record("getaddrinfo", node);
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
        (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))dlsym(RTLD_NEXT, "getaddrinfo");
    return real(node, service, hints, res);
}

struct hostent *gethostbyname(const char *name) {
    record("gethostbyname", name);
    struct hostent *(*real)(const char *) = (struct hostent * (*)(const char *)) dlsym(RTLD_NEXT, "gethostbyname");
    return real(name);
}

struct hostent *gethostbyname2(const char *name, int af) {
    record("gethostbyname2", name);
    struct hostent *(*real)(const char *, int) = (struct hostent * (*)(const char *, int)) dlsym(RTLD_NEXT, "gethostbyname2");
    return real(name, af);
}

int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t len, struct hostent **result, int *err) {
    record("gethostbyname_r", name);
    int (*real)(const char *, struct hostent *, char *, size_t, struct hostent **, int *) =
        (int (*)(const char *, struct hostent *, char *, size_t, struct hostent **, int *))dlsym(RTLD_NEXT, "gethostbyname_r");
    return real(name, ret, buf, len, result, err);
}
