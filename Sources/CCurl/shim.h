#ifndef AIMESH_CCURL_SHIM_H
#define AIMESH_CCURL_SHIM_H
#include <curl/curl.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* curl_easy_setopt, curl_easy_getinfo and curl_multi_setopt are variadic: Swift cannot call them.
   These typed wrappers are the only way the Swift side talks to them. */
typedef size_t (*aimesh_curl_data_callback)(char *ptr, size_t size, size_t nmemb, void *userdata);
typedef size_t (*aimesh_curl_read_callback)(char *buffer, size_t size, size_t nitems, void *userdata);

static inline CURLcode aimesh_curl_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode aimesh_curl_easy_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode aimesh_curl_easy_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode aimesh_curl_easy_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode aimesh_curl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode aimesh_curl_easy_setopt_data_callback(CURL *handle, CURLoption option, aimesh_curl_data_callback value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode aimesh_curl_easy_setopt_read_callback(CURL *handle, CURLoption option, aimesh_curl_read_callback value) {
    return curl_easy_setopt(handle, option, value);
}
static inline CURLcode aimesh_curl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}
static inline CURLcode aimesh_curl_easy_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}
static inline CURLcode aimesh_curl_easy_getinfo_double(CURL *handle, CURLINFO info, double *value) {
    return curl_easy_getinfo(handle, info, value);
}
static inline CURLMcode aimesh_curl_multi_setopt_long(CURLM *handle, CURLMoption option, long value) {
    return curl_multi_setopt(handle, option, value);
}
static inline CURLMcode aimesh_curl_multi_setopt_pointer(CURLM *handle, CURLMoption option, void *value) {
    return curl_multi_setopt(handle, option, value);
}
static inline CURLMcode aimesh_curl_multi_setopt_socket_callback(CURLM *handle, curl_socket_callback value) {
    return curl_multi_setopt(handle, CURLMOPT_SOCKETFUNCTION, value);
}
static inline CURLMcode aimesh_curl_multi_setopt_timer_callback(CURLM *handle, curl_multi_timer_callback value) {
    return curl_multi_setopt(handle, CURLMOPT_TIMERFUNCTION, value);
}
/* Macros Swift does not import. */
static inline curl_socket_t aimesh_curl_socket_timeout(void) { return CURL_SOCKET_TIMEOUT; }
static inline size_t aimesh_curl_writefunc_pause(void) { return CURL_WRITEFUNC_PAUSE; }
static inline int aimesh_curlpause_cont(void) { return CURLPAUSE_CONT; }

#ifdef __linux__
/* The engine's readiness loop (curl_multi_socket_action): epoll for curl's sockets plus an eventfd to wake
   the loop. struct epoll_event is packed on x86-64, so it never crosses into Swift. */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <stdint.h>
#include <errno.h>

static inline int aimesh_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
/* Registers or updates fd with CURL_POLL_* interest ("what"); removes it for CURL_POLL_REMOVE. */
static inline int aimesh_epoll_watch(int ep, int fd, int what, int already_added) {
    if (what == CURL_POLL_REMOVE) {
        return epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    }
    struct epoll_event ev = {0};
    ev.data.fd = fd;
    if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
    int rc = epoll_ctl(ep, already_added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    if (rc != 0 && errno == EEXIST) rc = epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    else if (rc != 0 && errno == ENOENT) rc = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return rc;
}
/* Names the calling thread (at most 15 bytes show), so `top -H`, `perf` and the task list in /proc tell the
   curl engine's thread from the event loop that started it (a new thread inherits its creator's name).
   prctl is variadic, hence the wrapper; elsewhere than Linux it does nothing. */
static inline void aimesh_name_current_thread(const char *name) {
#ifdef __linux__
    prctl(PR_SET_NAME, name, 0, 0, 0);
#else
    (void)name;
#endif
}

/* Waits; fills fds[] and CURL_CSELECT_* flags[]; returns the count (0 on timeout or EINTR). */
static inline int aimesh_epoll_wait(int ep, int *fds, int *flags, int max, int timeout_ms) {
    struct epoll_event events[64];
    if (max > 64) max = 64;
    int n = epoll_wait(ep, events, max, timeout_ms);
    if (n < 0) return 0;
    for (int i = 0; i < n; i++) {
        fds[i] = events[i].data.fd;
        int f = 0;
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) f |= CURL_CSELECT_IN;
        if (events[i].events & EPOLLOUT) f |= CURL_CSELECT_OUT;
        if (events[i].events & EPOLLERR) f |= CURL_CSELECT_ERR;
        flags[i] = f;
    }
    return n;
}
static inline int aimesh_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
static inline void aimesh_eventfd_signal(int fd) { uint64_t one = 1; ssize_t r = write(fd, &one, sizeof one); (void)r; }
static inline void aimesh_eventfd_drain(int fd) { uint64_t value; ssize_t r = read(fd, &value, sizeof value); (void)r; }
#endif
#endif
