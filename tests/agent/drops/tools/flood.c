/* UDP flood for the drop storm test and benchmark: sendmmsg() batches of small datagrams to
 * one address for a given time. Prints the number of datagrams the kernel accepted.
 * Datagrams an output-hook rule drops (EPERM) count as sent: the kernel freed them.
 * usage: flood ADDR PORT SECONDS [PAYLOAD_BYTES]   (IPv4 only) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: flood ADDR PORT SECONDS [BYTES]\n"); return 2; }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) { fprintf(stderr, "bad addr\n"); return 2; }
    double secs = atof(argv[3]);
    int size = argc > 4 ? atoi(argv[4]) : 16;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    static char payload[1500];
    memset(payload, 'x', sizeof payload);
    struct iovec iov = {.iov_base = payload, .iov_len = (size_t)size};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_name = &dst;
        msgs[i].msg_hdr.msg_namelen = sizeof dst;
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long sent = 0;
    double end = now() + secs;
    while (now() < end) {
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0) sent += n;
        else if (n < 0 && errno == EPERM) sent += 1;  /* dropped by an output hook: still sent */
    }
    printf("%llu\n", sent);
    return 0;
}
