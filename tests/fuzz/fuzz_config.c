/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness for the config loader (src/config.c): load the input over fresh defaults,
 * format the error, run the cross-field validation, and, when the result has no JWT secret file
 * to read, build the auth checker from it (src/auth.c) so fuzzed token lists reach it too.
 * Everything must be freed whether loading succeeded or stopped half-way.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct hd_config cfg;
    struct hd_config_error err;
    char msg[600];
    if (hd_config_defaults(&cfg) != 0)
        return 0;
    int rc = hd_config_load_string(&cfg, (const char *)data, size, "fuzz.json", &err);
    hd_config_error_format(&err, msg, sizeof(msg));
    if (strnlen(msg, sizeof(msg)) == sizeof(msg))
        abort();
    if (rc == 0) {
        (void)hd_config_validate(&cfg, &err);
        if (!cfg.auth.jwt_secret_file) {
            char aerr[256];
            struct hd_auth *a = hd_auth_new(&cfg, aerr, sizeof(aerr));
            if (a) {
                struct hd_identity id;
                struct hd_error e;
                if (hd_auth_authenticate(a, NULL, NULL, 0, &id, &e) != 0)
                    abort();
                (void)hd_auth_can_subscribe(&id, "public.x");
                hd_identity_clear(&id);
                hd_auth_free(a);
            }
        }
    }
    hd_config_free(&cfg);
    return 0;
}
