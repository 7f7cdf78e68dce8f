/* config.c — cpdl_config_t: defaults, key=value parsing, the environment,
 * the canonical text and its hash (the collective agreement on it is agree.c's).
 *
 * One table (keys[]) lists every key once, in canonical order; setting,
 * formatting, CPDL_<KEY> lookup, the known-keys text, the mismatch report and
 * the resume state's stream text (the keys marked `stream`) all walk it, so a
 * key cannot exist in one of them and be missing from another. Setters validate
 * into a copy and commit only on success: a failed call leaves cfg unchanged.
 */
#include "internal.h"
#include "schedule.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Canonical text bound: the source (< CPDL_SOURCE_MAX chars) may double when
 * escaped; everything else is a few dozen characters per key. */
#define CONFIG_TEXT_MAX (4 * CPDL_SOURCE_MAX + 1024)
/* One formatted value (unescaped). */
#define VALUE_MAX CPDL__CONFIG_VALUE_MAX

typedef enum {
  KEY_INT,      /* int in [min, max] */
  KEY_I64,      /* int64_t in [min, max] */
  KEY_U64,      /* uint64_t, any */
  KEY_BOOL,     /* 0/1 (also true/false, yes/no, on/off) */
  KEY_ORDER,    /* permutation of dp,cp,tp */
  KEY_MODE,     /* cpdl_mode_t */
  KEY_COLLATE,  /* pack | pad */
  KEY_POSITION, /* restart | continuous | 0 | 1 */
  KEY_SOURCE,   /* non-empty string */
  KEY_PIN,      /* auto | numa | none | cores:<list> */
  KEY_SCHEDULE, /* static | balanced | dynamic */
  KEY_COST,     /* a,b */
} key_kind_t;

typedef struct {
  const char *name;
  key_kind_t kind;
  size_t offset;   /* into cpdl_config_t */
  size_t size;     /* of the member (strings: buffer size) */
  int64_t min, max;
  bool suffix;     /* accepts K/M/G (1024-based) */
  bool stream;     /* decides the stream of batches: a resume state must match it
                      (the layout — cp, tp, order, and dp through the rank
                      count — and steps, slots, ring_bytes, threads, pin, timeouts may
                      change between a run and its resumption) */
} config_key_t;

#define MEMBER(m) offsetof(cpdl_config_t, m), sizeof(((cpdl_config_t *)0)->m)

/* Canonical order = struct order. */
static const config_key_t keys[] = {
    /* The layout is not a stream key: the global order does not depend on it. */
    {"cp", KEY_INT, MEMBER(cp), 1, 1 << 20, false, false},
    {"tp", KEY_INT, MEMBER(tp), 1, 1 << 20, false, false},
    {"order", KEY_ORDER, MEMBER(order), 0, 0, false, false},
    {"seq_len", KEY_I64, MEMBER(seq_len), 1, INT64_C(1) << 40, true, true},
    {"batch", KEY_INT, MEMBER(batch), 1, 1 << 24, true, true},
    {"steps", KEY_I64, MEMBER(steps), 0, INT64_MAX, true, false},
    {"slots", KEY_INT, MEMBER(slots), 0, CPDL__RING_MAX_SLOTS, false, false},
    {"mode", KEY_MODE, MEMBER(mode), 0, 0, false, true},
    {"seed", KEY_U64, MEMBER(seed), 0, 0, false, true},
    {"source", KEY_SOURCE, MEMBER(source), 0, 0, false, true},
    {"collate", KEY_COLLATE, MEMBER(collate), 0, 0, false, true},
    {"padding_token_id", KEY_I64, MEMBER(padding_token_id), INT64_MIN, INT64_MAX, false, true},
    {"position_ids", KEY_POSITION, MEMBER(position_ids), 0, 1, false, true},
    {"loss_on_eot", KEY_BOOL, MEMBER(loss_on_eot), 0, 1, false, true},
    {"drop_last", KEY_BOOL, MEMBER(drop_last), 0, 1, false, true},
    {"threads", KEY_INT, MEMBER(threads), 1, CPDL__MAX_THREADS, false, false},
    {"pin", KEY_PIN, MEMBER(pin), 0, 0, false, false},
    {"timeout_ms", KEY_INT, MEMBER(timeout_ms), 1, INT_MAX, false, false},
    {"epochs", KEY_I64, MEMBER(epochs), 0, INT64_MAX, false, false},
    /* Which replica computes which document of a global batch: the same global
     * rows, other views. Not stream keys: a run resumes under another schedule
     * (and layout) without losing or repeating a row. */
    {"schedule", KEY_SCHEDULE, MEMBER(schedule), 0, 0, false, false},
    {"cost", KEY_COST, MEMBER(cost), 0, 0, false, false},
    {"ring_bytes", KEY_I64, MEMBER(ring_bytes), 0, INT64_C(1) << 50, true, false},
};
#define N_KEYS ((int)(sizeof keys / sizeof keys[0]))

/* "cp, tp, ..." from the table. */
static void known_keys(char *buf, size_t size) {
  size_t at = 0;
  buf[0] = '\0';
  for (int i = 0; i < N_KEYS && at < size; i++) {
    int n = snprintf(buf + at, size - at, "%s%s", i ? ", " : "", keys[i].name);
    if (n < 0)
      break;
    at += (size_t)n;
  }
}

void cpdl_config_init(cpdl_config_t *cfg) {
  if (!cfg) {
    (void)cpdl__error(CPDL_EARG, "cpdl_config_init: cfg is NULL");
    return;
  }
  memset(cfg, 0, sizeof *cfg);
  cfg->struct_size = sizeof *cfg;
  cfg->cp = 1;
  cfg->tp = 1;
  snprintf(cfg->order, sizeof cfg->order, "dp,cp,tp");
  cfg->seq_len = 4096;
  cfg->batch = 1;
  cfg->steps = 100;
  cfg->slots = 0; /* sized by need (sizing.c) */
  cfg->mode = CPDL_MODE_CONTIGUOUS;
  cfg->seed = 1234;
  snprintf(cfg->source, sizeof cfg->source, "synthetic:");
  snprintf(cfg->collate, sizeof cfg->collate, "pack");
  cfg->padding_token_id = 0;
  cfg->position_ids = 0;
  cfg->loss_on_eot = 1;
  cfg->drop_last = 1;
  cfg->threads = 2; /* one collates step k+1 while the other prepares step k */
  snprintf(cfg->pin, sizeof cfg->pin, "auto");
  cfg->timeout_ms = 60000;
  cfg->epochs = 0; /* 1 when steps=0 (cpdl__config_epochs) */
  snprintf(cfg->schedule, sizeof cfg->schedule, "static");
  snprintf(cfg->cost, sizeof cfg->cost, "%.0f,%.0f", CPDL__SCHEDULE_COST_A, CPDL__SCHEDULE_COST_B);
  cfg->ring_bytes = 0; /* CPDL__RING_BYTES_DEFAULT */
}

uint64_t cpdl__config_epochs(const cpdl_config_t *cfg) {
  if (cfg->epochs > 0)
    return (uint64_t)cfg->epochs;
  return cfg->steps == 0 ? 1 : 0;
}

static const config_key_t *find_key(const char *name, size_t len) {
  for (int i = 0; i < N_KEYS; i++)
    if (strlen(keys[i].name) == len && strncmp(keys[i].name, name, len) == 0)
      return &keys[i];
  return NULL;
}

/* ---- value parsing -------------------------------------------------------- */

/* Strict signed integer: optional sign, decimal digits (or 0x hex), optional
 * K/M/G suffix when allowed, nothing else. */
static int parse_i64(const config_key_t *key, const char *value, int64_t *out) {
  const char *what = key->suffix ? "an integer (suffix K, M or G allowed, 1024-based)" : "an integer";
  if (!*value || isspace((unsigned char)*value))
    goto bad;
  errno = 0;
  char *end = NULL;
  long long parsed = strtoll(value, &end, 0);
  if (end == value)
    goto bad;
  if (errno == ERANGE)
    goto range;
  int64_t scale = 1;
  if (*end && key->suffix) {
    switch (*end) {
    case 'k': case 'K': scale = INT64_C(1) << 10; break;
    case 'm': case 'M': scale = INT64_C(1) << 20; break;
    case 'g': case 'G': scale = INT64_C(1) << 30; break;
    default: goto bad;
    }
    end++;
  }
  if (*end)
    goto bad;
  int64_t result;
  if (__builtin_mul_overflow((int64_t)parsed, scale, &result))
    goto range;
  if (result < key->min || result > key->max)
    goto range;
  *out = result;
  return 0;
bad:
  return cpdl__error(CPDL_EARG, "config key '%s': '%s' is not %s", key->name, value, what);
range:
  return cpdl__error(CPDL_EARG, "config key '%s': %s is out of range (expected %" PRId64
                     " .. %" PRId64 ")", key->name, value, key->min, key->max);
}

static int parse_u64(const config_key_t *key, const char *value, uint64_t *out) {
  /* strtoull accepts a leading '-' and wraps; refuse it explicitly. */
  if (!*value || !isxdigit((unsigned char)*value))
    goto bad;
  errno = 0;
  char *end = NULL;
  unsigned long long parsed = strtoull(value, &end, 0);
  if (end == value || *end)
    goto bad;
  if (errno == ERANGE)
    return cpdl__error(CPDL_EARG, "config key '%s': %s does not fit in 64 bits", key->name, value);
  *out = parsed;
  return 0;
bad:
  return cpdl__error(CPDL_EARG, "config key '%s': '%s' is not an unsigned integer", key->name,
                     value);
}

static int parse_bool(const config_key_t *key, const char *value, int *out) {
  static const char *const truthy[] = {"1", "true", "yes", "on"};
  static const char *const falsy[] = {"0", "false", "no", "off"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(value, truthy[i]) == 0) { *out = 1; return 0; }
    if (strcasecmp(value, falsy[i]) == 0) { *out = 0; return 0; }
  }
  return cpdl__error(CPDL_EARG, "config key '%s': '%s' is not a boolean (expected 0 or 1)",
                     key->name, value);
}

/* cores:<list> where list is "a", "a-b", joined by commas. */
static bool valid_core_list(const char *list) {
  const char *p = list;
  if (!*p)
    return false;
  for (;;) {
    if (!isdigit((unsigned char)*p))
      return false;
    char *end;
    unsigned long lo = strtoul(p, &end, 10);
    p = end;
    if (*p == '-') {
      p++;
      if (!isdigit((unsigned char)*p))
        return false;
      unsigned long hi = strtoul(p, &end, 10);
      if (hi < lo)
        return false;
      p = end;
    }
    if (*p == '\0')
      return true;
    if (*p != ',')
      return false;
    p++;
  }
}

static int store_string(const config_key_t *key, cpdl_config_t *cfg, const char *value) {
  size_t len = strlen(value);
  if (len >= key->size)
    return cpdl__error(CPDL_EARG, "config key '%s': value of %zu characters is too long (at most %zu)",
                       key->name, len, key->size - 1);
  /* Zero the tail so equal configs are equal byte for byte. */
  char *dst = (char *)cfg + key->offset;
  memset(dst, 0, key->size);
  memcpy(dst, value, len);
  return 0;
}

/* Parse `value` for `key` into cfg. On error cfg may be partly written: the
 * public entry points work on a copy. */
static int apply(cpdl_config_t *cfg, const config_key_t *key, const char *value) {
  char *field = (char *)cfg + key->offset;
  int rc;
  switch (key->kind) {
  case KEY_INT: {
    int64_t v = 0;
    if ((rc = parse_i64(key, value, &v)) < 0)
      return rc;
    if (field == (char *)&cfg->slots && v == 1) /* a ring needs a slot to fill and one to read */
      return cpdl__error(CPDL_EARG, "config key 'slots': 1 is out of range (expected 0, sized by "
                         "need, or 2 .. %u)", CPDL__RING_MAX_SLOTS);
    *(int *)field = (int)v; /* range-checked against an int-sized [min, max] */
    return 0;
  }
  case KEY_I64: {
    int64_t v = 0;
    if ((rc = parse_i64(key, value, &v)) < 0)
      return rc;
    *(int64_t *)field = v;
    return 0;
  }
  case KEY_U64: {
    uint64_t v = 0;
    if ((rc = parse_u64(key, value, &v)) < 0)
      return rc;
    *(uint64_t *)field = v;
    return 0;
  }
  case KEY_BOOL:
    return parse_bool(key, value, (int *)field);
  case KEY_POSITION:
    if (strcmp(value, "restart") == 0 || strcmp(value, "0") == 0)
      *(int *)field = 0;
    else if (strcmp(value, "continuous") == 0 || strcmp(value, "1") == 0)
      *(int *)field = 1;
    else
      return cpdl__error(CPDL_EARG,
                         "config key 'position_ids': '%s' is not valid (expected restart, "
                         "continuous, 0 or 1)", value);
    return 0;
  case KEY_ORDER: {
    int dp, cpr, tpr;
    if (cpdl__mesh_coords(0, 1, 1, 1, value, &dp, &cpr, &tpr) < 0)
      return cpdl__error(CPDL_EARG, "config key 'order': '%s' is not valid (expected a "
                         "permutation of dp,cp,tp, slowest first, e.g. dp,cp,tp)", value);
    return store_string(key, cfg, value);
  }
  case KEY_MODE:
    if (cpdl_mode_parse(value, (cpdl_mode_t *)field) < 0)
      return cpdl__error(CPDL_EARG, "config key 'mode': '%s' is not valid (expected contiguous, "
                         "round_robin, aux_only or thd)", value);
    return 0;
  case KEY_SCHEDULE: {
    cpdl__schedule_kind_t kind;
    if (cpdl__schedule_parse(value, &kind))
      return cpdl__error(CPDL_EARG, "config key 'schedule': '%s' is not valid (expected static, "
                         "balanced or dynamic)", value);
    return store_string(key, cfg, value);
  }
  case KEY_COST: {
    double a, b;
    if (cpdl__schedule_cost_parse(value, &a, &b))
      return cpdl__error_prefix(CPDL_EARG, "config key 'cost'");
    return store_string(key, cfg, value);
  }
  case KEY_COLLATE:
    if (strcmp(value, "pack") != 0 && strcmp(value, "pad") != 0)
      return cpdl__error(CPDL_EARG, "config key 'collate': '%s' is not valid (expected pack or pad)",
                         value);
    return store_string(key, cfg, value);
  case KEY_SOURCE:
    if (!*value)
      return cpdl__error(CPDL_EARG, "config key 'source': empty (expected a data-source URI such "
                         "as synthetic: or llmc:/path/to/train.bin)");
    return store_string(key, cfg, value);
  case KEY_PIN:
    if (strcmp(value, "auto") != 0 && strcmp(value, "numa") != 0 && strcmp(value, "none") != 0 &&
        !(strncmp(value, "cores:", 6) == 0 && valid_core_list(value + 6)))
      return cpdl__error(CPDL_EARG, "config key 'pin': '%s' is not valid (expected auto, numa, "
                         "none or cores:<list> such as cores:0-3,8)", value);
    return store_string(key, cfg, value);
  }
  return cpdl__error(CPDL_EARG, "config key '%s': internal kind %d", key->name, (int)key->kind);
}

static int check_cfg(const cpdl_config_t *cfg) {
  if (!cfg)
    return cpdl__error(CPDL_EARG, "config is NULL");
  if (cfg->struct_size < sizeof *cfg)
    return cpdl__error(CPDL_EARG, "config struct_size %zu is smaller than %zu: call "
                       "cpdl_config_init() first", cfg->struct_size, sizeof *cfg);
  return 0;
}

static int set_key(cpdl_config_t *cfg, const char *name, size_t name_len, const char *value) {
  const config_key_t *key = find_key(name, name_len);
  if (!key) {
    char known[512];
    known_keys(known, sizeof known);
    return cpdl__error(CPDL_EARG, "unknown config key '%.*s' (known keys: %s)", (int)name_len, name,
                       known);
  }
  return apply(cfg, key, value);
}

int cpdl_config_set(cpdl_config_t *cfg, const char *key, const char *value) {
  int rc = check_cfg(cfg);
  if (rc < 0)
    return rc;
  if (!key || !value)
    return cpdl__error(CPDL_EARG, "cpdl_config_set: key and value must not be NULL");
  cpdl_config_t copy = *cfg;
  if ((rc = set_key(&copy, key, strlen(key), value)) < 0)
    return rc;
  *cfg = copy;
  return 0;
}

/* ---- key=value text ------------------------------------------------------- */

static bool is_key_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

/* In an unquoted value, a comma separates pairs only when (after more commas
 * or spaces) a known key and '=' or the end of the text follow it; otherwise
 * it belongs to the value ("order=dp,cp,tp", "pin=cores:0-3,8"). */
static bool comma_ends_value(const char *comma) {
  const char *p = comma + 1;
  while (isspace((unsigned char)*p) || *p == ',')
    p++;
  if (*p == '\0')
    return true;
  const char *name = p;
  while (is_key_char(*p))
    p++;
  return p > name && *p == '=' && find_key(name, (size_t)(p - name)) != NULL;
}

int cpdl_config_parse(cpdl_config_t *cfg, const char *text) {
  int rc = check_cfg(cfg);
  if (rc < 0)
    return rc;
  if (!text)
    return 0;
  cpdl_config_t copy = *cfg;
  char value[CONFIG_TEXT_MAX];
  const char *p = text;
  for (;;) {
    while (isspace((unsigned char)*p) || *p == ',')
      p++;
    if (!*p)
      break;
    const char *name = p;
    while (is_key_char(*p))
      p++;
    size_t name_len = (size_t)(p - name);
    if (name_len == 0 || *p != '=')
      return cpdl__error(CPDL_EARG, "config text: expected key=value at '%.40s' (offset %td)",
                         name, name - text);
    p++;
    size_t len = 0;
    if (*p == '"') {
      /* Quoted: backslash escapes the next character. */
      p++;
      while (*p && *p != '"') {
        if (*p == '\\' && p[1])
          p++;
        if (len + 1 >= sizeof value)
          return cpdl__error(CPDL_EARG, "config text: value of '%.*s' is too long", (int)name_len,
                             name);
        value[len++] = *p++;
      }
      if (*p != '"')
        return cpdl__error(CPDL_EARG, "config text: unterminated quote in the value of '%.*s'",
                           (int)name_len, name);
      p++;
      if (*p && !isspace((unsigned char)*p) && *p != ',')
        return cpdl__error(CPDL_EARG, "config text: expected a space or comma after the quoted "
                           "value of '%.*s'", (int)name_len, name);
    } else {
      while (*p && !isspace((unsigned char)*p) && !(*p == ',' && comma_ends_value(p))) {
        if (len + 1 >= sizeof value)
          return cpdl__error(CPDL_EARG, "config text: value of '%.*s' is too long", (int)name_len,
                             name);
        value[len++] = *p++;
      }
    }
    value[len] = '\0';
    if ((rc = set_key(&copy, name, name_len, value)) < 0)
      return rc;
  }
  *cfg = copy;
  return 0;
}

/* CPDL_* variables that are not configuration keys. */
static const char *const other_vars[] = {"PLUGIN_PATH", "DEBUG", "FAULT", "GPU", "RANKS_PER_NODE",
                                         "LIBRARY", "BIN", "CUDA_LIBRARY", "PREFETCH_ENGINE",
                                         NULL};

/* Levenshtein distance of two short names (case-insensitive), capped at 9. */
static int distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 40 || lb > 40)
    return 9;
  int row[41];
  for (size_t j = 0; j <= lb; j++)
    row[j] = (int)j;
  for (size_t i = 1; i <= la; i++) {
    int diag = row[0];
    row[0] = (int)i;
    for (size_t j = 1; j <= lb; j++) {
      int up = row[j];
      int cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
      int best = diag + cost;
      if (row[j] + 1 < best)
        best = row[j] + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb] > 9 ? 9 : row[lb];
}

/* A CPDL_* variable that is neither a key nor one of other_vars is likely a
 * misspelt key: say so once per process, naming the closest key. */
static void warn_unknown_vars(void) {
  static int warned;
  extern char **environ;
  for (char **e = environ; e && *e; e++) {
    if (strncmp(*e, "CPDL_", 5) != 0)
      continue;
    const char *name = *e + 5, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    char lower[48];
    if (len == 0 || len >= sizeof lower || strncmp(name, "TEST_", 5) == 0)
      continue;
    for (size_t k = 0; k < len; k++)
      lower[k] = (char)tolower((unsigned char)name[k]);
    lower[len] = '\0';
    bool known = find_key(lower, len) != NULL;
    for (int k = 0; !known && other_vars[k]; k++)
      known = strlen(other_vars[k]) == len && strncmp(other_vars[k], name, len) == 0;
    if (known || __atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
      continue;
    int best = 0;
    for (int i = 1; i < N_KEYS; i++)
      if (distance(lower, keys[i].name) < distance(lower, keys[best].name))
        best = i;
    char var[64], known_text[512];
    known_keys(known_text, sizeof known_text);
    snprintf(var, sizeof var, "CPDL_%s", keys[best].name);
    for (char *c = var + 5; *c; c++)
      *c = (char)toupper((unsigned char)*c);
    fprintf(stderr, "cpdl: warning: environment variable CPDL_%.*s is not a configuration key "
            "and is ignored; did you mean %s? (known keys: %s)\n", (int)len, name, var,
            known_text);
  }
}

int cpdl__config_from_env_except(cpdl_config_t *cfg, const char *const *skip, int n_skip) {
  int rc = check_cfg(cfg);
  if (rc < 0)
    return rc;
  warn_unknown_vars();
  cpdl_config_t copy = *cfg;
  for (int i = 0; i < N_KEYS; i++) {
    bool skipped = false;
    for (int k = 0; k < n_skip && !skipped; k++)
      skipped = strcmp(skip[k], keys[i].name) == 0;
    if (skipped)
      continue;
    char var[64] = "CPDL_";
    size_t at = 5;
    for (const char *c = keys[i].name; *c && at + 1 < sizeof var; c++)
      var[at++] = (char)toupper((unsigned char)*c);
    var[at] = '\0';
    const char *value = getenv(var);
    if (!value)
      continue;
    if ((rc = apply(&copy, &keys[i], value)) < 0)
      return cpdl__error_prefix(rc, "environment variable %s", var);
  }
  *cfg = copy;
  return 0;
}

int cpdl_config_from_env(cpdl_config_t *cfg) { return cpdl__config_from_env_except(cfg, NULL, 0); }

/* ---- canonical text ------------------------------------------------------- */

/* The value of key i as text (unescaped). */
static void format_value(const cpdl_config_t *cfg, const config_key_t *key, char *out, size_t size) {
  const char *field = (const char *)cfg + key->offset;
  switch (key->kind) {
  case KEY_INT:
  case KEY_BOOL:
    snprintf(out, size, "%d", *(const int *)field);
    return;
  case KEY_I64:
    snprintf(out, size, "%" PRId64, *(const int64_t *)field);
    return;
  case KEY_U64:
    snprintf(out, size, "%" PRIu64, *(const uint64_t *)field);
    return;
  case KEY_POSITION:
    snprintf(out, size, "%s", *(const int *)field ? "continuous" : "restart");
    return;
  case KEY_MODE:
    snprintf(out, size, "%s", cpdl_mode_name(*(const cpdl_mode_t *)field));
    return;
  case KEY_ORDER:
  case KEY_COLLATE:
  case KEY_SOURCE:
  case KEY_PIN:
  case KEY_SCHEDULE:
  case KEY_COST:
    /* The buffer may lack a NUL if a caller wrote it directly. */
    snprintf(out, size, "%.*s", (int)strnlen(field, key->size), field);
    return;
  }
  snprintf(out, size, "?");
}

static bool needs_quotes(const char *value) {
  if (!*value)
    return true;
  for (const char *p = value; *p; p++)
    if (isspace((unsigned char)*p) || *p == '"' || *p == '\\' || (*p == ',' && comma_ends_value(p)))
      return true;
  return *value == '"';
}

/* Append to buf like snprintf, tracking the needed length in *len. */
static void put(char *buf, size_t size, size_t *len, char c) {
  if (*len + 1 < size)
    buf[*len] = c;
  (*len)++;
}

/* The canonical text of every key, or of the stream keys only. */
static int format_keys(const cpdl_config_t *cfg, bool stream_only, char *buf, size_t size) {
  if (!cfg)
    return cpdl__error(CPDL_EARG, "config is NULL");
  if (!buf)
    size = 0;
  size_t len = 0;
  char value[VALUE_MAX];
  for (int i = 0; i < N_KEYS; i++) {
    if (stream_only && !keys[i].stream)
      continue;
    if (len > 0)
      put(buf, size, &len, ' ');
    for (const char *c = keys[i].name; *c; c++)
      put(buf, size, &len, *c);
    put(buf, size, &len, '=');
    format_value(cfg, &keys[i], value, sizeof value);
    bool quoted = needs_quotes(value);
    if (quoted)
      put(buf, size, &len, '"');
    for (const char *c = value; *c; c++) {
      if (quoted && (*c == '"' || *c == '\\'))
        put(buf, size, &len, '\\');
      put(buf, size, &len, *c);
    }
    if (quoted)
      put(buf, size, &len, '"');
  }
  if (size > 0)
    buf[len < size ? len : size - 1] = '\0';
  return len > INT_MAX ? INT_MAX : (int)len;
}

int cpdl_config_format(const cpdl_config_t *cfg, char *buf, size_t size) {
  return format_keys(cfg, false, buf, size);
}

int cpdl__config_stream_format(const cpdl_config_t *cfg, char *buf, size_t size) {
  return format_keys(cfg, true, buf, size);
}

int cpdl__config_stream_compare(const cpdl_config_t *saved, const cpdl_config_t *now) {
  char was[VALUE_MAX], is[VALUE_MAX];
  for (int i = 0; i < N_KEYS; i++) {
    if (!keys[i].stream)
      continue;
    format_value(saved, &keys[i], was, sizeof was);
    format_value(now, &keys[i], is, sizeof is);
    if (strcmp(was, is) != 0)
      return cpdl__error(CPDL_ECONFIG, "resume state was saved with %s=%s, this job has %s=%s; "
                         "resume with the options the state was saved with", keys[i].name, was,
                         keys[i].name, is);
  }
  return 0;
}

int cpdl__config_key_count(void) { return N_KEYS; }

const char *cpdl__config_key(int i, bool *stream) {
  if (i < 0 || i >= N_KEYS)
    return NULL;
  if (stream)
    *stream = keys[i].stream;
  return keys[i].name;
}

uint64_t cpdl__config_hash(const cpdl_config_t *cfg) {
  char text[CONFIG_TEXT_MAX];
  int len = cpdl_config_format(cfg, text, sizeof text);
  if (len < 0)
    return 0;
  if ((size_t)len >= sizeof text)
    len = (int)sizeof text - 1; /* cannot happen: CONFIG_TEXT_MAX bounds every key */
  return cpdl__fnv1a(CPDL__FNV1A_BASIS, text, (size_t)len);
}

int cpdl__config_value(const cpdl_config_t *cfg, int i, char *buf, size_t size) {
  if (i < 0 || i >= N_KEYS || !buf || size == 0)
    return cpdl__error(CPDL_EARG, "config key index %d is outside 0..%d", i, N_KEYS - 1);
  char value[VALUE_MAX];
  format_value(cfg, &keys[i], value, sizeof value);
  snprintf(buf, size, "%s", value);
  return 0;
}

void cpdl__config_prep_params(const cpdl_config_t *cfg, cpdl_prep_params_t *params) {
  cpdl_prep_params_init(params);
  params->cp_size = cfg->cp;
  params->tp_size = cfg->tp;
  params->mode = cfg->mode;
  params->padding_token_id = cfg->padding_token_id;
}
