/*
 * LD_PRELOAD shim for testing Debian 12's Amanda 3.5 against a local S3 server.
 *
 * Amanda 3.5 sets CURLOPT_HTTPGET, CURLOPT_UPLOAD, CURLOPT_POST and CURLOPT_NOBODY on every
 * request. Since libcurl ~7.85, `CURLOPT_POST, 0` resets the method to GET, so every PUT goes out
 * as a GET (zmanda/amanda issue #259). This shim drops exactly that call.
 *
 * It also adds `Content-Type: application/octet-stream` to requests that carry none: Amanda sends
 * none with its PUTs, servers such as Garage then answer GETs of those objects without a
 * Content-Type, and Amanda 3.5 crashes on such a response. With signature v4 the added header is
 * not signed, which S3 servers accept.
 *
 * And it makes up for the Content-Type that Garage leaves out of its XML answers (to
 * CreateMultipartUpload and CompleteMultipartUpload, say): when a response has a body but neither
 * Content-Type nor Transfer-Encoding, Amanda 3.5.1's interpret_response (s3.c) calls
 * g_str_equal(hdl->transfer_encoding, "chunked") on a NULL transfer_encoding and crashes, which
 * is what S3_MULTI_PART_UPLOAD hits first. Amanda's header callback is wrapped so that it also
 * sees `Transfer-Encoding: identity` at the end of such a response's headers (curl does not see
 * it). With that, Amanda does what it means to: it parses the body as XML when the body says
 * `<?xml version`, and leaves it alone otherwise.
 *
 * Built by the tests at run time: gcc -shared -fPIC -o curl-post-shim.so curl-post-shim.c -ldl
 * No libcurl headers needed: the option numbers below are libcurl's stable ABI.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#define OPT_POST 47L          /* CURLOPTTYPE_LONG + 47 */
#define OPT_HTTPHEADER 10023L /* CURLOPTTYPE_SLISTPOINT + 23 */
#define OPT_HEADERFUNCTION 20079L /* CURLOPTTYPE_FUNCTIONPOINT + 79 */

struct slist { char *data; struct slist *next; };

typedef int (*setopt_fn)(void *, long, ...);
typedef struct slist *(*append_fn)(struct slist *, const char *);
typedef size_t (*header_fn)(char *, size_t, size_t, void *);

/* Amanda installs one header callback (s3_internal_header_func) on all its handles. */
static header_fn amanda_header;
/* What the response being received on this thread has said so far (curl calls back on the
 * thread that performs the transfer, and each of Amanda's threads has its own handle). */
static __thread int seen_type, seen_encoding;

static size_t header_wrap(char *line, size_t size, size_t nmemb, void *data)
{
    size_t len = size * nmemb;
    if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        seen_type = seen_encoding = 0;
    } else if (len >= 13 && strncasecmp(line, "Content-Type:", 13) == 0) {
        seen_type = 1;
    } else if (len >= 18 && strncasecmp(line, "Transfer-Encoding:", 18) == 0) {
        seen_encoding = 1;
    } else if ((len == 2 && line[0] == '\r' && line[1] == '\n') || (len == 1 && line[0] == '\n')) {
        if (!seen_type && !seen_encoding) {
            char extra[] = "Transfer-Encoding: identity\r\n";
            amanda_header(extra, 1, sizeof extra - 1, data);
        }
    }
    return amanda_header(line, size, nmemb, data);
}

int curl_easy_setopt(void *handle, long option, ...)
{
    static setopt_fn real_setopt;
    static append_fn real_append;
    va_list ap;
    void *arg;

    if (!real_setopt) {
        /* Perl loads Amanda's XS modules, and libcurl with them, with RTLD_LOCAL: RTLD_NEXT
         * does not see libcurl then, so ask for the library already loaded by name. */
        void *curl = dlopen("libcurl.so.4", RTLD_NOW | RTLD_NOLOAD);
        if (!curl)
            curl = dlopen("libcurl-gnutls.so.4", RTLD_NOW | RTLD_NOLOAD);
        real_setopt = (setopt_fn)dlsym(RTLD_NEXT, "curl_easy_setopt");
        if (!real_setopt && curl)
            real_setopt = (setopt_fn)dlsym(curl, "curl_easy_setopt");
        real_append = (append_fn)dlsym(RTLD_NEXT, "curl_slist_append");
        if (!real_append && curl)
            real_append = (append_fn)dlsym(curl, "curl_slist_append");
        if (!real_setopt)
            return 48; /* CURLE_UNKNOWN_OPTION */
    }
    va_start(ap, option);
    /* Every argument type (long, pointer, curl_off_t) is one 64-bit register on x86-64 and arm64. */
    arg = va_arg(ap, void *);
    va_end(ap);

    if (option == OPT_POST && arg == 0)
        return 0; /* CURLE_OK: the call that turns PUT into GET is dropped */

    if (option == OPT_HTTPHEADER && arg != 0 && real_append) {
        struct slist *item;
        int has_type = 0;
        for (item = (struct slist *)arg; item; item = item->next)
            if (item->data && strncasecmp(item->data, "Content-Type:", 13) == 0)
                has_type = 1;
        if (!has_type)
            real_append((struct slist *)arg, "Content-Type: application/octet-stream");
    }
    if (option == OPT_HEADERFUNCTION && arg != 0) {
        amanda_header = (header_fn)arg;
        arg = (void *)header_wrap;
    }
    return real_setopt(handle, option, arg);
}
