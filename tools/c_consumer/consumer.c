/*
 * A downstream consumer of segstream masks in C, using only libzmq and the public wire
 * format (docs/wire-format.md). It proves the format is language-neutral.
 *
 *   cc consumer.c -lzmq -o segstream-consumer
 *   ./segstream-consumer tcp://127.0.0.1:5560 [COUNT [SERVER_KEY CLIENT_KEY_SECRET]]
 *
 * With key files (from `segstream keys DIR --client NAME`: DIR/server.key and
 * DIR/NAME.key_secret) it connects as a CURVE client, for endpoints published with
 * --publish-keys.
 *
 * Prints one line per mask ("source index WxH bytes"); for instance models also a line
 * "source index instances N" and one line per instance ("  id label score x0 y0 x1 y1",
 * box in frame pixels); and a summary. Exits 0 when every
 * raw mask's payload matches its declared shape and frame indices of each source increase,
 * after end of stream (or COUNT masks), and 1 otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define MAX_PARTS 8
#define MAX_SOURCES 16

/* Find "key": in a JSON object text and return a pointer just after the colon. */
static const char *find_key(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(json, pattern);
    return at ? at + strlen(pattern) : NULL;
}

static long read_long(const char *json, const char *key, long fallback) {
    const char *at = find_key(json, key);
    return at ? strtol(at, NULL, 10) : fallback;
}

static int read_string(const char *json, const char *key, char *out, size_t size) {
    const char *at = find_key(json, key);
    if (!at || *at != '"') return 0;
    const char *end = strchr(at + 1, '"');
    if (!end || (size_t)(end - at - 1) >= size) return 0;
    memcpy(out, at + 1, (size_t)(end - at - 1));
    out[end - at - 1] = '\0';
    return 1;
}

/* The mask part: {"name":"mask","shape":[H,W],"dtype":"uint8","encoding":"raw","inline":K}. */
static int mask_part(const char *json, long *height, long *width, long *inline_index, int *raw) {
    const char *part = strstr(json, "{\"name\":\"mask\"");
    if (!part) return 0;
    const char *shape = find_key(part, "shape");
    if (!shape || sscanf(shape, "[%ld,%ld]", height, width) != 2) return 0;
    char encoding[16] = "raw";
    read_string(part, "encoding", encoding, sizeof encoding);
    *raw = strcmp(encoding, "raw") == 0;
    *inline_index = read_long(part, "inline", -1);
    return *inline_index >= 0;
}

/* An instance model's meta.instances: [{"id":1,"class_id":3,"label":"car","score":0.93,
 * "box":[x0,y0,x1,y1]},...]. Prints the count and each instance; returns the count, or -1
 * for a result without instances. */
static int print_instances(const char *header, const char *source, long index) {
    const char *at = find_key(header, "instances");
    if (!at || *at != '[') return -1;
    int count = 0;
    const char *scan = at + 1;
    /* count first (one object per instance; objects hold no nested objects) */
    for (const char *p = scan; *p && *p != ']'; p++) {
        if (*p != '{') continue;
        count++;
        p = strchr(p, '}');
        if (!p) break;
    }
    printf("%s %ld instances %d\n", source, index, count);
    while ((scan = strchr(scan, '{')) != NULL) {
        const char *end = strchr(scan, '}');
        if (!end || (size_t)(end - scan) >= 512) break;
        char object[512], label[128] = "?";
        memcpy(object, scan, (size_t)(end - scan));
        object[end - scan] = '\0';
        double box[4] = {0, 0, 0, 0}, score = 0;
        const char *value = find_key(object, "score");
        if (value) score = strtod(value, NULL);
        value = find_key(object, "box");
        if (value) sscanf(value, "[%lf,%lf,%lf,%lf]", &box[0], &box[1], &box[2], &box[3]);
        read_string(object, "label", label, sizeof label);
        printf("  %ld %s %.3f %.1f %.1f %.1f %.1f\n", read_long(object, "id", 0), label, score, box[0], box[1],
               box[2], box[3]);
        scan = end + 1;
        if (*scan != ',') break;  /* the list's end */
    }
    return count;
}

/* The Z85 text of `public-key = "..."` or `secret-key = "..."` in a ZeroMQ key file. */
static int read_key(const char *path, const char *name, char out[41]) {
    FILE *file = fopen(path, "r");
    if (!file) return 0;
    char line[256], pattern[32];
    snprintf(pattern, sizeof pattern, "%s = \"", name);
    int found = 0;
    while (!found && fgets(line, sizeof line, file)) {
        const char *at = strstr(line, pattern);
        if (at && strlen(at + strlen(pattern)) >= 41 && at[strlen(pattern) + 40] == '"') {
            memcpy(out, at + strlen(pattern), 40);
            out[40] = '\0';
            found = 1;
        }
    }
    fclose(file);
    return found;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc == 4 || argc > 5) {
        fprintf(stderr, "usage: %s ENDPOINT [COUNT [SERVER_KEY CLIENT_KEY_SECRET]]\n", argv[0]);
        return 2;
    }
    long wanted = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
    void *context = zmq_ctx_new();
    void *sub = zmq_socket(context, ZMQ_SUB);
    if (argc == 5) {
        char server[41], public_key[41], secret[41];
        if (!read_key(argv[3], "public-key", server) || !read_key(argv[4], "public-key", public_key) ||
            !read_key(argv[4], "secret-key", secret)) {
            fprintf(stderr, "cannot read the keys in %s and %s (segstream keys DIR --client NAME)\n", argv[3],
                    argv[4]);
            return 2;
        }
        zmq_setsockopt(sub, ZMQ_CURVE_SERVERKEY, server, 40);
        zmq_setsockopt(sub, ZMQ_CURVE_PUBLICKEY, public_key, 40);
        zmq_setsockopt(sub, ZMQ_CURVE_SECRETKEY, secret, 40);
    }
    int timeout_ms = 120000;
    zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_connect(sub, argv[1]) != 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", argv[1], zmq_strerror(zmq_errno()));
        return 2;
    }
    char sources[MAX_SOURCES][128];
    long last_index[MAX_SOURCES];
    int n_sources = 0, ended = 0, errors = 0;
    long received = 0;
    for (;;) {
        zmq_msg_t parts[MAX_PARTS];
        int n = 0, more = 1;
        while (more && n < MAX_PARTS) {
            zmq_msg_init(&parts[n]);
            if (zmq_msg_recv(&parts[n], sub, 0) < 0) {
                fprintf(stderr, "no message for %d s\n", timeout_ms / 1000);
                return 1;
            }
            more = zmq_msg_more(&parts[n]);
            n++;
        }
        if (n < 2) { errors++; continue; }
        size_t header_size = zmq_msg_size(&parts[1]);
        char *header = malloc(header_size + 1);
        memcpy(header, zmq_msg_data(&parts[1]), header_size);
        header[header_size] = '\0';
        char kind[16] = "", source[128] = "";
        read_string(header, "kind", kind, sizeof kind);
        read_string(header, "source", source, sizeof source);
        if (read_long(header, "version", -1) != 1) errors++;
        int s = 0;
        while (s < n_sources && strcmp(sources[s], source) != 0) s++;
        if (s == n_sources && n_sources < MAX_SOURCES) {
            strcpy(sources[n_sources], source);
            last_index[n_sources++] = -1;
        }
        if (strcmp(kind, "eos") == 0) {
            ended++;
        } else if (strcmp(kind, "result") == 0) {
            long index = read_long(header, "index", -1), height = 0, width = 0, k = -1;
            int raw = 1;
            /* raw masks must be exactly H*W bytes; png and rle ones are only counted here */
            if (!mask_part(header, &height, &width, &k, &raw) || 2 + k >= n ||
                (raw && zmq_msg_size(&parts[2 + k]) != (size_t)(height * width))) {
                fprintf(stderr, "frame %ld: mask payload does not match its shape\n", index);
                errors++;
            }
            if (index <= last_index[s]) {
                fprintf(stderr, "frame %ld of %s after frame %ld\n", index, source, last_index[s]);
                errors++;
            }
            last_index[s] = index;
            received++;
            printf("%s %ld %ldx%ld %zu\n", source, index, width, height, zmq_msg_size(&parts[2 + k]));
            print_instances(header, source, index);
            fflush(stdout);
        }
        free(header);
        for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
        if ((wanted && received >= wanted) || (n_sources && ended >= n_sources)) break;
    }
    printf("received %ld masks from %d source(s), %d error(s)\n", received, n_sources, errors);
    zmq_close(sub);
    zmq_ctx_term(context);
    return errors ? 1 : 0;
}
