/* The floor: what the kernel charges for producing the data one collection cycle reads,
 * with nothing else around it. Each cycle opens, reads and closes the same system-wide files
 * vigil's collectors read, statvfs()es the real filesystems, reads every /proc/PID/stat, and
 * preads the containers' two cgroup files on descriptors held open (as vigil does).
 * With `all`, also what the later collectors read: pressure, TCP sockets through sock_diag
 * (one dump for IPv4 and IPv6), snmp/netstat, conntrack, and a second /proc/PID/stat pass.
 * Prints user and system CPU per cycle (getrusage) and the process count.
 *
 * Build and run: cc -O2 -o floor bench/floor.c && ./floor seed|all CYCLES [CGROUP_FILE ...]
 * (bench/overhead.py builds it, makes the container cgroups and passes their files.) */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

static char buf[1 << 16];
static long bytes_read;

static void slurp(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) bytes_read += n;
    close(fd);
}

static const char *SEED_FILES[] = {"/proc/stat", "/proc/diskstats", "/proc/loadavg", "/proc/meminfo",
                                   "/proc/vmstat", "/proc/net/dev", "/proc/sys/fs/file-nr", NULL};
static const char *LATER_FILES[] = {"/proc/pressure/cpu", "/proc/pressure/memory", "/proc/pressure/io",
                                    "/proc/net/snmp", "/proc/net/netstat",
                                    "/proc/sys/net/netfilter/nf_conntrack_count",
                                    "/proc/sys/net/netfilter/nf_conntrack_max", NULL};

/* Mount points whose source is a block device, from mountinfo (read every cycle, as vigil does). */
static void statvfs_real(void) {
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f) return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        char *fields[12];
        int n = 0;
        for (char *t = strtok(line, " \n"); t && n < 12; t = strtok(NULL, " \n")) fields[n++] = t;
        /* id parent dev root mountpoint opts [optional...] - fstype source superopts */
        int dash = -1;
        for (int i = 6; i < n; i++)
            if (strcmp(fields[i], "-") == 0) { dash = i; break; }
        if (dash < 0 || dash + 2 >= n || strncmp(fields[dash + 2], "/dev/", 5) != 0) continue;
        struct statvfs st;
        statvfs(fields[4], &st);
    }
    fclose(f);
}

static int pid_stats(void) {
    DIR *d = opendir("/proc");
    if (!d) return 0;
    struct dirent *e;
    int n = 0;
    char path[300];
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        slurp(path);
        n++;
    }
    closedir(d);
    return n;
}

static void list_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) return;
    while (readdir(d)) {}
    closedir(d);
}

/* Both families in one walk of the kernel's TCP hash table (TCPDIAG_GETSOCK), as vigil does. */
static void tcp_dump(int sock) {
    struct { struct nlmsghdr h; struct inet_diag_req r; } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = TCPDIAG_GETSOCK;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.r.idiag_states = 0x1ffe;
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
    if (sendto(sock, &req, sizeof req, 0, (struct sockaddr *)&nl, sizeof nl) < 0) return;
    for (;;) {
        ssize_t n = recv(sock, buf, sizeof buf, 0);
        if (n <= 0) return;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) return;
            bytes_read += ((struct inet_diag_msg *)NLMSG_DATA(h))->idiag_state;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[1], "seed") && strcmp(argv[1], "all"))) {
        fprintf(stderr, "usage: %s seed|all CYCLES [CGROUP_FILE ...]\n", argv[0]);
        return 2;
    }
    int all = strcmp(argv[1], "all") == 0;
    long cycles = atol(argv[2]);
    int nfiles = argc - 3, *held = calloc(nfiles + 1, sizeof(int));
    for (int i = 0; i < nfiles; i++) held[i] = open(argv[3 + i], O_RDONLY | O_CLOEXEC);
    int sock = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    struct rusage r0, r1;
    int procs = 0;
    getrusage(RUSAGE_SELF, &r0);
    for (long c = 0; c < cycles; c++) {
        for (const char **f = SEED_FILES; *f; f++) slurp(*f);
        list_dir("/sys/block");
        statvfs_real();
        procs = pid_stats();
        for (int i = 0; i < nfiles; i++)
            if (held[i] >= 0) bytes_read += pread(held[i], buf, sizeof buf, 0);
        if (all) {
            for (const char **f = LATER_FILES; *f; f++) slurp(*f);
            tcp_dump(sock);
            pid_stats();
        }
    }
    getrusage(RUSAGE_SELF, &r1);
    double user = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) * 1e3 + (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e3;
    double sys = (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1e3 + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e3;
    printf("{\"mode\": \"%s\", \"cycles\": %ld, \"processes\": %d, \"cgroup_files\": %d, "
           "\"user_ms\": %.4f, \"system_ms\": %.4f, \"cpu_ms\": %.4f}\n",
           argv[1], cycles, procs, nfiles, user / cycles, sys / cycles, (user + sys) / cycles);
    return 0;
}
