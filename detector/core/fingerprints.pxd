# BLAKE2b with an 8-byte digest (RFC 7693) in C: hashlib's object, its digest bytes and
# int.from_bytes cost ~8k instructions per fingerprint; these ~2k. The .py's functions, run as
# Python, call hashlib (the oracle the tests compare these with).
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    typedef struct {
        uint64_t h[8];
        uint64_t t;      /* bytes compressed so far */
        size_t n;        /* bytes waiting in buf */
        uint8_t buf[128];
    } detector_b2;

    static const uint64_t detector_b2_iv[8] = {
        0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL,
        0xA54FF53A5F1D36F1ULL, 0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
        0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};

    static const uint8_t detector_b2_sigma[12][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

    #define DETECTOR_B2_ROTR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
    #define DETECTOR_B2_G(a, b, c, d, x, y) do {                \\
        v[a] = v[a] + v[b] + (x); v[d] = DETECTOR_B2_ROTR(v[d] ^ v[a], 32); \\
        v[c] = v[c] + v[d];       v[b] = DETECTOR_B2_ROTR(v[b] ^ v[c], 24); \\
        v[a] = v[a] + v[b] + (y); v[d] = DETECTOR_B2_ROTR(v[d] ^ v[a], 16); \\
        v[c] = v[c] + v[d];       v[b] = DETECTOR_B2_ROTR(v[b] ^ v[c], 63); \\
    } while (0)

    static void detector_b2_compress(detector_b2 *s, const uint8_t *block, int last) {
        uint64_t v[16], m[16];
        int i, r;
        for (i = 0; i < 16; i++) {
            const uint8_t *b = block + 8 * i;  /* little-endian words on any host */
            m[i] = (uint64_t)b[0] | (uint64_t)b[1] << 8 | (uint64_t)b[2] << 16
                | (uint64_t)b[3] << 24 | (uint64_t)b[4] << 32 | (uint64_t)b[5] << 40
                | (uint64_t)b[6] << 48 | (uint64_t)b[7] << 56;
        }
        for (i = 0; i < 8; i++) {
            v[i] = s->h[i];
            v[i + 8] = detector_b2_iv[i];
        }
        v[12] ^= s->t;  /* the counter's high word stays 0: inputs are far below 2^64 bytes */
        if (last) v[14] = ~v[14];
        for (r = 0; r < 12; r++) {
            const uint8_t *p = detector_b2_sigma[r];
            DETECTOR_B2_G(0, 4, 8, 12, m[p[0]], m[p[1]]);
            DETECTOR_B2_G(1, 5, 9, 13, m[p[2]], m[p[3]]);
            DETECTOR_B2_G(2, 6, 10, 14, m[p[4]], m[p[5]]);
            DETECTOR_B2_G(3, 7, 11, 15, m[p[6]], m[p[7]]);
            DETECTOR_B2_G(0, 5, 10, 15, m[p[8]], m[p[9]]);
            DETECTOR_B2_G(1, 6, 11, 12, m[p[10]], m[p[11]]);
            DETECTOR_B2_G(2, 7, 8, 13, m[p[12]], m[p[13]]);
            DETECTOR_B2_G(3, 4, 9, 14, m[p[14]], m[p[15]]);
        }
        for (i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
    }

    static void detector_b2_init(detector_b2 *s) {
        memcpy(s->h, detector_b2_iv, sizeof s->h);
        s->h[0] ^= 0x01010008ULL;  /* digest 8 bytes, no key, fanout 1, depth 1 */
        s->t = 0;
        s->n = 0;
    }

    static void detector_b2_update(detector_b2 *s, const uint8_t *p, size_t len) {
        while (len > 0) {
            size_t take;
            if (s->n == 128) {  /* a full block is compressed once more input follows */
                s->t += 128;
                detector_b2_compress(s, s->buf, 0);
                s->n = 0;
            }
            take = 128 - s->n < len ? 128 - s->n : len;
            memcpy(s->buf + s->n, p, take);
            s->n += take;
            p += take;
            len -= take;
        }
    }

    /* The digest's 8 bytes read as a little-endian integer: h[0]. */
    static uint64_t detector_b2_final(detector_b2 *s) {
        s->t += s->n;
        memset(s->buf + s->n, 0, 128 - s->n);
        detector_b2_compress(s, s->buf, 1);
        return s->h[0];
    }

    /* The fingerprints' bytes read straight from the strings' UTF-8 (no encoded copies). A
       string that is not valid UTF-8 raises, as str.encode would: 0 with an exception set. */
    static uint64_t detector_fp_text(PyObject *text) {
        detector_b2 s;
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(text, &n);
        if (p == NULL) return 0;
        detector_b2_init(&s);
        detector_b2_update(&s, (const uint8_t *)p, (size_t)n);
        return detector_b2_final(&s);
    }

    /* The producer's length first (4 bytes, little-endian), then both strings. */
    static uint64_t detector_fp_pair(PyObject *producer, PyObject *event_id) {
        detector_b2 s;
        Py_ssize_t np, ni;
        uint8_t len[4];
        const char *p = PyUnicode_AsUTF8AndSize(producer, &np);
        const char *i = p == NULL ? NULL : PyUnicode_AsUTF8AndSize(event_id, &ni);
        if (i == NULL) return 0;
        len[0] = (uint8_t)np;
        len[1] = (uint8_t)(np >> 8);
        len[2] = (uint8_t)(np >> 16);
        len[3] = (uint8_t)(np >> 24);
        detector_b2_init(&s);
        detector_b2_update(&s, len, 4);
        detector_b2_update(&s, (const uint8_t *)p, (size_t)np);
        detector_b2_update(&s, (const uint8_t *)i, (size_t)ni);
        return detector_b2_final(&s);
    }
    """
    unsigned long long detector_fp_text(object text) except? 0
    unsigned long long detector_fp_pair(object producer, object event_id) except? 0

cdef bint _IN_C
cpdef unsigned long long fingerprint(str text) except? 0
cpdef unsigned long long pair_fingerprint(str producer, str event_id) except? 0
