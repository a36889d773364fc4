/*
 * echo_load: a TCP echo load generator (no packaged tool does this here: wrk
 * speaks only HTTP and tcpkali is not in Debian's archive).
 *
 *   echo_load HOST PORT short|long CONNECTIONS SECONDS [LINE_BYTES [INTERVAL_MS]]
 *
 * Keeps CONNECTIONS sockets busy for SECONDS. Each request sends one line of
 * LINE_BYTES (default 64, newline included) and waits for it to come back.
 * "short" opens a new connection per request (connect, send, receive, close);
 * "long" keeps every connection open. Prints one JSON object: requests,
 * errors, seconds, rps, p50_ms, p99_ms, max_ms (latency from the start of the
 * request, the connect included in "short" mode), and served: how many of
 * the connections got any answer at all (a pool with fewer request slots than
 * long-lived connections starves the rest, which latency alone hides).
 *
 * INTERVAL_MS (long mode): paced clients instead of as-fast-as-possible ones.
 * Each connection sends its next line INTERVAL_MS after it sent the previous
 * one, or as soon as that one is answered if it is late. The connections
 * open (and send their first lines) spread evenly over the first interval, as
 * clients arriving at a steady rate would, not all at once. After SECONDS no new
 * line is sent, and the lines still on their way get up to DRAIN_SECONDS to
 * come back. The JSON then also has sent (lines written whole) and answered;
 * sent - answered were lost (a connection that failed) or never came back.
 *
 * One thread, non-blocking sockets, level-triggered epoll. bench.py compiles
 * it with `cc -O2`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { CONNECTING, SENDING, RECEIVING, WAITING };   /* WAITING: a paced connection's pause */

struct conn {
    int fd;
    enum state state;
    size_t done;          /* bytes sent or received of the current line */
    double started;       /* request start, seconds */
    int served;           /* got at least one answer */
    double due;           /* paced: when its next line is to be sent, seconds */
};

static struct sockaddr_in address;
static int epfd, line_bytes = 64, short_mode;
static char line[4096];
static double *latencies;
static size_t latency_count, latency_capacity;
static long errors, sent;
static double interval;   /* paced mode: seconds between a connection's lines; 0 otherwise */
#define DRAIN_SECONDS 2.0

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void record(double seconds) {
    if (latency_count == latency_capacity) {
        latency_capacity = latency_capacity ? latency_capacity * 2 : 1 << 16;
        latencies = realloc(latencies, latency_capacity * sizeof *latencies);
        if (!latencies) { perror("realloc"); exit(2); }
    }
    latencies[latency_count++] = seconds;
}

static void watch(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) { perror("epoll_ctl"); exit(2); }
}

static void open_conn(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { perror("socket"); exit(2); }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->started = now();
    c->done = 0;
    if (connect(c->fd, (struct sockaddr *)&address, sizeof address) == 0 || errno == EINPROGRESS) {
        c->state = CONNECTING;
        watch(c, EPOLLOUT, EPOLL_CTL_ADD);
        return;
    }
    errors++;
    close(c->fd);
    c->fd = -1;
}

static void restart(struct conn *c, int failed) {
    if (failed) errors++;
    close(c->fd);              /* also removes it from the epoll set */
    open_conn(c);
}

/* A paced connection between lines: watched for input only to notice the server closing it. */
static void wait_turn(struct conn *c) {
    c->state = WAITING;
    watch(c, EPOLLIN, EPOLL_CTL_MOD);
}

static void step(struct conn *c, uint32_t events);

/* Paced mode: start the lines that are due; milliseconds until the next line or connection is (100 at most). */
static int pace(struct conn *conns, int connections, double t) {
    double next = t + 0.1;
    for (int i = 0; i < connections; i++) {
        struct conn *c = &conns[i];
        if (c->fd < 0 && c->due < next) next = c->due;     /* opened by main's loop once due */
        if (c->fd < 0 || c->state != WAITING) continue;
        if (c->due <= t) {
            c->started = t;
            c->state = SENDING;
            c->done = 0;
            step(c, EPOLLOUT);
        } else if (c->due < next) {
            next = c->due;
        }
    }
    return next > t ? (int)((next - t) * 1000) + 1 : 0;
}

/* Paced mode: whether some line has been sent (or is being sent) and not yet answered. */
static int in_flight(struct conn *conns, int connections) {
    for (int i = 0; i < connections; i++)
        if (conns[i].fd >= 0 && (conns[i].state == SENDING || conns[i].state == RECEIVING)) return 1;
    return 0;
}

static void step(struct conn *c, uint32_t events) {
    if (events & (EPOLLERR | EPOLLHUP) && c->state != RECEIVING) { restart(c, 1); return; }
    if (c->state == CONNECTING) {
        int err = 0; socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { restart(c, 1); return; }
        if (interval > 0) { wait_turn(c); return; }
        c->state = SENDING;
    }
    if (c->state == SENDING) {
        ssize_t n = send(c->fd, line + c->done, line_bytes - c->done, MSG_NOSIGNAL);
        if (n < 0) { if (errno != EAGAIN) restart(c, 1); return; }
        c->done += n;
        if (c->done < (size_t)line_bytes) { watch(c, EPOLLOUT, EPOLL_CTL_MOD); return; }
        sent++;
        c->state = RECEIVING;
        c->done = 0;
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
        return;
    }
    char buffer[4096];
    ssize_t n = recv(c->fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0 || c->state == WAITING) { restart(c, 1); return; }   /* closed, or bytes nobody asked for */
    c->done += n;
    if (c->done < (size_t)line_bytes) return;
    double t = now();
    record(t - c->started);
    c->served = 1;
    if (short_mode) { restart(c, 0); return; }
    if (interval > 0) { c->due = c->started + interval; wait_turn(c); return; }
    c->started = t;
    c->state = SENDING;
    c->done = 0;
    step(c, EPOLLOUT);
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double p) {
    if (!latency_count) return 0;
    size_t i = (size_t)(p * (latency_count - 1) + 0.5);
    return latencies[i] * 1000;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT short|long CONNECTIONS SECONDS [LINE_BYTES [INTERVAL_MS]]\n",
                argv[0]);
        return 2;
    }
    address.sin_family = AF_INET;
    address.sin_port = htons(atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &address.sin_addr) != 1) { fprintf(stderr, "bad host\n"); return 2; }
    short_mode = strcmp(argv[3], "short") == 0;
    int connections = atoi(argv[4]);
    double seconds = atof(argv[5]);
    if (argc > 6) line_bytes = atoi(argv[6]);
    if (argc > 7) interval = atof(argv[7]) / 1000;
    if (interval < 0 || (interval > 0 && short_mode)) { fprintf(stderr, "bad INTERVAL_MS (long mode)\n"); return 2; }
    if (line_bytes < 2 || line_bytes > (int)sizeof line) { fprintf(stderr, "bad line size\n"); return 2; }
    memset(line, 'x', line_bytes - 1);
    line[line_bytes - 1] = '\n';

    epfd = epoll_create1(0);
    struct conn *conns = calloc(connections, sizeof *conns);
    if (interval == 0)
        for (int i = 0; i < connections; i++) open_conn(&conns[i]);

    double start = now(), end = start + seconds;
    for (int i = 0; i < connections && interval > 0; i++) {
        conns[i].fd = -1;                                /* paced: opened when its first line is due */
        conns[i].due = start + interval * i / connections;
    }
    struct epoll_event events[256];
    double t;
    while ((t = now()) < end || (interval > 0 && t < end + DRAIN_SECONDS && in_flight(conns, connections))) {
        int timeout = interval > 0 ? (t < end ? pace(conns, connections, t) : 10) : 100;
        int n = epoll_wait(epfd, events, 256, timeout);
        for (int i = 0; i < n; i++) step(events[i].data.ptr, events[i].events);
        for (int i = 0; i < connections; i++)      /* a failed connect() retried; a paced one opened when due */
            if (conns[i].fd < 0 && conns[i].due <= t) open_conn(&conns[i]);
    }
    double elapsed = now() - start;
    int served = 0;
    for (int i = 0; i < connections; i++) served += conns[i].served;
    qsort(latencies, latency_count, sizeof *latencies, compare);
    printf("{\"requests\": %zu, \"errors\": %ld, \"seconds\": %.3f, \"rps\": %.1f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, \"served\": %d",
           latency_count, errors, elapsed, latency_count / elapsed,
           percentile(0.50), percentile(0.99), percentile(1.0), served);
    if (interval > 0) printf(", \"sent\": %ld, \"answered\": %zu", sent, latency_count);
    printf("}\n");
    return 0;
}
