#ifndef AIMESH_CCURL_SHIM_H
#define AIMESH_CCURL_SHIM_H
#include <curl/curl.h>

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
/* Macros Swift does not import. */
static inline size_t aimesh_curl_writefunc_pause(void) { return CURL_WRITEFUNC_PAUSE; }
static inline int aimesh_curlpause_cont(void) { return CURLPAUSE_CONT; }
#endif
