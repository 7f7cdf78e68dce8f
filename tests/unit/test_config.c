/* test_config.c — cpdl_config_*: defaults, every key, parsing, suffixes,
 * errors and their messages, the environment, the canonical text and hash. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void assert_contains(const char *haystack, const char *needle) {
  if (!strstr(haystack, needle))
    fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

static void test_defaults(void **state) {
  (void)state;
  cpdl_config_t cfg;
  memset(&cfg, 0xab, sizeof cfg);
  cpdl_config_init(&cfg);
  assert_int_equal(cfg.struct_size, sizeof cfg);
  assert_int_equal(cfg.cp, 1);
  assert_int_equal(cfg.tp, 1);
  assert_string_equal(cfg.order, "dp,cp,tp");
  assert_int_equal(cfg.seq_len, 4096);
  assert_int_equal(cfg.batch, 1);
  assert_int_equal(cfg.steps, 100);
  assert_int_equal(cfg.slots, 0); /* sized by need (sizing.c) */
  assert_int_equal(cfg.ring_bytes, 0);
  assert_int_equal(cfg.mode, CPDL_MODE_CONTIGUOUS);
  assert_int_equal(cfg.seed, 1234);
  assert_string_equal(cfg.source, "synthetic:");
  assert_string_equal(cfg.collate, "pack");
  assert_int_equal(cfg.padding_token_id, 0);
  assert_int_equal(cfg.position_ids, 0);
  assert_int_equal(cfg.loss_on_eot, 1);
  assert_int_equal(cfg.drop_last, 1);
  assert_int_equal(cfg.threads, 2);
  assert_string_equal(cfg.pin, "auto");
  assert_int_equal(cfg.timeout_ms, 60000);
}

static void test_set_each_key(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_set(&cfg, "cp", "4"), 0);
  assert_int_equal(cfg.cp, 4);
  assert_int_equal(cpdl_config_set(&cfg, "tp", "2"), 0);
  assert_int_equal(cfg.tp, 2);
  assert_int_equal(cpdl_config_set(&cfg, "order", "tp,dp,cp"), 0);
  assert_string_equal(cfg.order, "tp,dp,cp");
  assert_int_equal(cpdl_config_set(&cfg, "seq_len", "8192"), 0);
  assert_int_equal(cfg.seq_len, 8192);
  assert_int_equal(cpdl_config_set(&cfg, "batch", "3"), 0);
  assert_int_equal(cfg.batch, 3);
  assert_int_equal(cpdl_config_set(&cfg, "steps", "0"), 0);
  assert_int_equal(cfg.steps, 0);
  assert_int_equal(cpdl_config_set(&cfg, "slots", "2"), 0);
  assert_int_equal(cfg.slots, 2);
  assert_int_equal(cpdl_config_set(&cfg, "mode", "round_robin"), 0);
  assert_int_equal(cfg.mode, CPDL_MODE_ROUND_ROBIN);
  assert_int_equal(cpdl_config_set(&cfg, "mode", "aux_only"), 0);
  assert_int_equal(cfg.mode, CPDL_MODE_AUX_ONLY);
  assert_int_equal(cpdl_config_set(&cfg, "seed", "18446744073709551615"), 0);
  assert_true(cfg.seed == UINT64_MAX);
  assert_int_equal(cpdl_config_set(&cfg, "source", "llmc:/data/train.bin"), 0);
  assert_string_equal(cfg.source, "llmc:/data/train.bin");
  assert_int_equal(cpdl_config_set(&cfg, "collate", "pad"), 0);
  assert_string_equal(cfg.collate, "pad");
  assert_int_equal(cpdl_config_set(&cfg, "padding_token_id", "-1"), 0);
  assert_int_equal(cfg.padding_token_id, -1);
  assert_int_equal(cpdl_config_set(&cfg, "position_ids", "continuous"), 0);
  assert_int_equal(cfg.position_ids, 1);
  assert_int_equal(cpdl_config_set(&cfg, "position_ids", "restart"), 0);
  assert_int_equal(cfg.position_ids, 0);
  assert_int_equal(cpdl_config_set(&cfg, "position_ids", "1"), 0);
  assert_int_equal(cfg.position_ids, 1);
  assert_int_equal(cpdl_config_set(&cfg, "loss_on_eot", "0"), 0);
  assert_int_equal(cfg.loss_on_eot, 0);
  assert_int_equal(cpdl_config_set(&cfg, "drop_last", "false"), 0);
  assert_int_equal(cfg.drop_last, 0);
  assert_int_equal(cpdl_config_set(&cfg, "drop_last", "1"), 0);
  assert_int_equal(cfg.drop_last, 1);
  assert_int_equal(cpdl_config_set(&cfg, "threads", "8"), 0);
  assert_int_equal(cfg.threads, 8);
  assert_int_equal(cpdl_config_set(&cfg, "pin", "cores:0-3,8"), 0);
  assert_string_equal(cfg.pin, "cores:0-3,8");
  assert_int_equal(cpdl_config_set(&cfg, "pin", "none"), 0);
  assert_string_equal(cfg.pin, "none");
  assert_int_equal(cpdl_config_set(&cfg, "timeout_ms", "250"), 0);
  assert_int_equal(cfg.timeout_ms, 250);
}

static void test_suffixes(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_set(&cfg, "seq_len", "128K"), 0);
  assert_int_equal(cfg.seq_len, 131072);
  assert_int_equal(cpdl_config_set(&cfg, "seq_len", "1M"), 0);
  assert_int_equal(cfg.seq_len, 1048576);
  assert_int_equal(cpdl_config_set(&cfg, "seq_len", "4k"), 0);
  assert_int_equal(cfg.seq_len, 4096);
  assert_int_equal(cpdl_config_set(&cfg, "steps", "2K"), 0);
  assert_int_equal(cfg.steps, 2048);
  /* Keys that are not sizes take no suffix. */
  assert_int_equal(cpdl_config_set(&cfg, "cp", "2K"), CPDL_EARG);
  assert_int_equal(cfg.cp, 1);
  assert_int_equal(cpdl_config_set(&cfg, "seq_len", "4KB"), CPDL_EARG);
  assert_int_equal(cfg.seq_len, 4096);
}

static void test_bad_values(void **state) {
  (void)state;
  cpdl_config_t cfg, before;
  cpdl_config_init(&cfg);
  before = cfg;
  static const struct { const char *key, *value, *says; } cases[] = {
      {"cp", "0", "out of range"},
      {"cp", "-2", "out of range"},
      {"cp", "two", "not an integer"},
      {"cp", "", "not an integer"},
      {"cp", " 2", "not an integer"},
      {"cp", "2x", "not an integer"},
      {"cp", "99999999999999999999", "out of range"},
      {"tp", "0", "out of range"},
      {"slots", "1", "out of range"},
      {"seq_len", "0", "out of range"},
      {"batch", "0", "out of range"},
      {"steps", "-1", "out of range"},
      {"seed", "-1", "unsigned integer"},
      {"seed", "123456789012345678901234", "64 bits"},
      {"mode", "zigzag", "contiguous, round_robin, aux_only or thd"},
      {"collate", "stack", "pack or pad"},
      {"order", "dp,cp", "permutation of dp,cp,tp"},
      {"order", "dp,dp,tp", "permutation of dp,cp,tp"},
      {"order", "dp,cp,tp,", "permutation of dp,cp,tp"},
      {"position_ids", "sometimes", "restart, continuous, 0 or 1"},
      {"loss_on_eot", "2", "expected 0 or 1"},
      {"threads", "0", "out of range"},
      {"threads", "17", "out of range (expected 1 .. 16)"}, /* CPDL__MAX_THREADS, as open */
      {"slots", "1025", "out of range (expected 0 .. 1024)"}, /* the ring's slots */
      {"slots", "-1", "out of range"},
      {"ring_bytes", "-1", "out of range"},
      {"epochs", "-1", "out of range"},
      {"pin", "cores:", "cores:<list>"},
      {"pin", "cores:3-1", "cores:<list>"},
      {"pin", "everywhere", "cores:<list>"},
      {"timeout_ms", "0", "out of range"},
      {"source", "", "expected a data-source URI"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cpdl__error_clear();
    int rc = cpdl_config_set(&cfg, cases[i].key, cases[i].value);
    if (rc != CPDL_EARG)
      fail_msg("%s=%s: expected CPDL_EARG, got %d", cases[i].key, cases[i].value, rc);
    assert_contains(cpdl_last_error(), cases[i].key);
    assert_contains(cpdl_last_error(), cases[i].says);
    /* A failed set leaves the config as it was. */
    assert_memory_equal(&cfg, &before, sizeof cfg);
  }
  /* Too long for the buffer. */
  char long_source[CPDL_SOURCE_MAX + 8];
  memset(long_source, 'a', sizeof long_source - 1);
  long_source[sizeof long_source - 1] = '\0';
  assert_int_equal(cpdl_config_set(&cfg, "source", long_source), CPDL_EARG);
  assert_contains(cpdl_last_error(), "too long");
}

static void test_unknown_key(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_set(&cfg, "seqlen", "10"), CPDL_EARG);
  assert_contains(cpdl_last_error(), "unknown config key 'seqlen'");
  /* The message lists the known keys. */
  assert_contains(cpdl_last_error(), "seq_len");
  assert_contains(cpdl_last_error(), "timeout_ms");
  assert_int_equal(cpdl_config_set(&cfg, NULL, "1"), CPDL_EARG);
  assert_int_equal(cpdl_config_set(NULL, "cp", "1"), CPDL_EARG);
  /* A config nobody initialised is refused. */
  cpdl_config_t raw;
  memset(&raw, 0, sizeof raw);
  assert_int_equal(cpdl_config_set(&raw, "cp", "2"), CPDL_EARG);
  assert_contains(cpdl_last_error(), "cpdl_config_init");
}

static void test_parse(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_parse(&cfg, "  cp=2 tp=2,seq_len=128K ,\tbatch=4,,mode=round_robin, "),
                   0);
  assert_int_equal(cfg.cp, 2);
  assert_int_equal(cfg.tp, 2);
  assert_int_equal(cfg.seq_len, 131072);
  assert_int_equal(cfg.batch, 4);
  assert_int_equal(cfg.mode, CPDL_MODE_ROUND_ROBIN);
  /* Commas inside values that are not followed by a key stay in the value. */
  assert_int_equal(cpdl_config_parse(&cfg, "order=cp,dp,tp,pin=cores:0-3,8 slots=3"), 0);
  assert_string_equal(cfg.order, "cp,dp,tp");
  assert_string_equal(cfg.pin, "cores:0-3,8");
  assert_int_equal(cfg.slots, 3);
  /* Quoted values keep spaces; backslash escapes. */
  assert_int_equal(cpdl_config_parse(&cfg, "source=\"npy:/my dir/x\\\"y\" cp=1"), 0);
  assert_string_equal(cfg.source, "npy:/my dir/x\"y");
  assert_int_equal(cfg.cp, 1);
  assert_int_equal(cpdl_config_parse(&cfg, ""), 0);

  /* A bad pair rejects the whole text; nothing is applied. */
  cpdl_config_t before = cfg;
  assert_int_equal(cpdl_config_parse(&cfg, "cp=8 slots=1"), CPDL_EARG);
  assert_contains(cpdl_last_error(), "slots");
  assert_memory_equal(&cfg, &before, sizeof cfg);
  assert_int_equal(cpdl_config_parse(&cfg, "cp=8 bogus=1"), CPDL_EARG);
  assert_contains(cpdl_last_error(), "unknown config key 'bogus'");
  assert_int_equal(cpdl_config_parse(&cfg, "cp 8"), CPDL_EARG);
  assert_contains(cpdl_last_error(), "expected key=value");
  assert_int_equal(cpdl_config_parse(&cfg, "source=\"abc"), CPDL_EARG);
  assert_contains(cpdl_last_error(), "unterminated");
  assert_memory_equal(&cfg, &before, sizeof cfg);
}

static void test_env(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  setenv("CPDL_SEQ_LEN", "64K", 1);
  setenv("CPDL_CP", "4", 1);
  setenv("CPDL_POSITION_IDS", "continuous", 1);
  setenv("CPDL_TIMEOUT_MS", "1500", 1);
  assert_int_equal(cpdl_config_from_env(&cfg), 0);
  assert_int_equal(cfg.seq_len, 65536);
  assert_int_equal(cfg.cp, 4);
  assert_int_equal(cfg.position_ids, 1);
  assert_int_equal(cfg.timeout_ms, 1500);
  assert_int_equal(cfg.tp, 1);

  cpdl_config_t before = cfg;
  setenv("CPDL_SLOTS", "one", 1);
  assert_int_equal(cpdl_config_from_env(&cfg), CPDL_EARG);
  assert_contains(cpdl_last_error(), "CPDL_SLOTS");
  assert_contains(cpdl_last_error(), "not an integer");
  assert_memory_equal(&cfg, &before, sizeof cfg);
  unsetenv("CPDL_SLOTS");
  unsetenv("CPDL_SEQ_LEN");
  unsetenv("CPDL_CP");
  unsetenv("CPDL_POSITION_IDS");
  unsetenv("CPDL_TIMEOUT_MS");
}

static void test_format_round_trip(void **state) {
  (void)state;
  cpdl_config_t cfg, back;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_parse(&cfg, "cp=4 tp=2 order=tp,cp,dp seq_len=1M batch=7 steps=0 "
                                           "slots=9 mode=aux_only seed=99 collate=pad "
                                           "padding_token_id=-5 position_ids=1 loss_on_eot=0 "
                                           "drop_last=0 threads=3 pin=cores:1,2,5-7 "
                                           "timeout_ms=10 epochs=3"),
                   0);
  assert_int_equal(cpdl_config_set(&cfg, "source", "npy:/a dir/with \"quotes\"\\,cp=3"), 0);

  char text[4096];
  int len = cpdl_config_format(&cfg, text, sizeof text);
  assert_true(len > 0 && (size_t)len == strlen(text));
  /* Fixed order: keys in struct order. */
  assert_true(strncmp(text, "cp=4 tp=2 order=tp,cp,dp seq_len=1048576 ", 41) == 0);
  assert_contains(text, "position_ids=continuous");
  assert_contains(text, "timeout_ms=10");
  assert_contains(text, "epochs=3");

  cpdl_config_init(&back);
  assert_int_equal(cpdl_config_parse(&back, text), 0);
  assert_memory_equal(&back, &cfg, sizeof cfg);

  /* Defaults round-trip too. */
  cpdl_config_t defaults, again;
  cpdl_config_init(&defaults);
  cpdl_config_format(&defaults, text, sizeof text);
  cpdl_config_init(&again);
  assert_int_equal(cpdl_config_parse(&again, "cp=8 seed=1"), 0);
  assert_int_equal(cpdl_config_parse(&again, text), 0);
  assert_memory_equal(&again, &defaults, sizeof defaults);

  /* snprintf contract: the needed length, truncated but terminated output. */
  char small[8];
  int needed = cpdl_config_format(&cfg, small, sizeof small);
  assert_int_equal(needed, len);
  assert_int_equal(strlen(small), sizeof small - 1);
  assert_int_equal(cpdl_config_format(&cfg, NULL, 0), len);
}

static void test_hash(void **state) {
  (void)state;
  cpdl_config_t a, b;
  cpdl_config_init(&a);
  cpdl_config_init(&b);
  assert_true(cpdl__config_hash(&a) == cpdl__config_hash(&b));
  assert_int_equal(cpdl_config_set(&b, "seq_len", "4097"), 0);
  assert_true(cpdl__config_hash(&a) != cpdl__config_hash(&b));
  cpdl_config_init(&b);
  assert_int_equal(cpdl_config_set(&b, "timeout_ms", "5001"), 0);
  assert_true(cpdl__config_hash(&a) != cpdl__config_hash(&b));
  /* Same value, different spelling: same hash. */
  cpdl_config_init(&b);
  assert_int_equal(cpdl_config_set(&b, "seq_len", "4K"), 0);
  assert_int_equal(cpdl_config_set(&b, "position_ids", "restart"), 0);
  assert_true(cpdl__config_hash(&a) == cpdl__config_hash(&b));
  /* FNV-1a 64 of the canonical text, computed here independently. */
  char text[4096];
  int len = cpdl_config_format(&a, text, sizeof text);
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int i = 0; i < len; i++) {
    h ^= (unsigned char)text[i];
    h *= 0x100000001b3ULL;
  }
  assert_true(h == cpdl__config_hash(&a));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),     cmocka_unit_test(test_set_each_key),
      cmocka_unit_test(test_suffixes),     cmocka_unit_test(test_bad_values),
      cmocka_unit_test(test_unknown_key),  cmocka_unit_test(test_parse),
      cmocka_unit_test(test_env),          cmocka_unit_test(test_format_round_trip),
      cmocka_unit_test(test_hash),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
