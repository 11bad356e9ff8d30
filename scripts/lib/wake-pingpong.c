// Round trip of a wake-up between two threads (eventfd) or two processes (pipes), each side optionally
// pinned to a CPU: what one hand-off between threads costs on this machine.
//   wake-pingpong threads|processes CPU_A CPU_B [ROUNDS]     (CPU -1: not pinned)
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int rounds = 20000, to_peer, to_main;

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) { perror("sched_setaffinity"); exit(1); }
}

static void echo_loop(void) {
    uint64_t value;
    for (int i = 0; i < rounds; i++) {
        if (read(to_peer, &value, 8) != 8 || write(to_main, &value, 8) != 8) { perror("peer"); exit(1); }
    }
}

static void *peer_thread(void *cpu) { pin((int)(intptr_t)cpu); echo_loop(); return NULL; }

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s threads|processes CPU_A CPU_B [ROUNDS]\n", argv[0]); return 2; }
    int threads = strcmp(argv[1], "threads") == 0, cpu_a = atoi(argv[2]), cpu_b = atoi(argv[3]);
    if (argc > 4) rounds = atoi(argv[4]);
    pthread_t thread;
    pid_t child = -1;
    if (threads) {
        to_peer = eventfd(0, 0);
        to_main = eventfd(0, 0);
        pthread_create(&thread, NULL, peer_thread, (void *)(intptr_t)cpu_b);
    } else {
        int a[2], b[2];
        if (pipe(a) || pipe(b)) { perror("pipe"); return 1; }
        // Pipes carry 8-byte messages here just like the eventfds.
        child = fork();
        if (child == 0) { to_peer = a[0]; to_main = b[1]; pin(cpu_b); echo_loop(); _exit(0); }
        to_peer = a[1]; to_main = b[0];
    }
    pin(cpu_a);
    int out = to_peer, in = to_main;
    struct timespec start, end;
    uint64_t value = 1;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < rounds; i++) {
        if (write(out, &value, 8) != 8 || read(in, &value, 8) != 8) { perror("main"); return 1; }
        value = 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    if (threads) pthread_join(thread, NULL); else waitpid(child, NULL, 0);
    double micros = ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / rounds / 1000.0;
    printf("%-9s cpus %2d/%-2d  round trip %7.1f us  (%.1f us per wake-up)\n", argv[1], cpu_a, cpu_b, micros, micros / 2);
    return 0;
}
