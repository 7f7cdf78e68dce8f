/* options.c — command-line options shared by `cpdl run` and `cpdl bench`.
 * Configuration keys are not listed here: config.c owns their names, so a
 * new key is a new option with no change to the CLI. One internal: the
 * environment is applied without the keys the command line sets
 * (cpdl_tools_config_from_env_except, cpdl/tools.h), so a bad CPDL_<KEY> that the command line
 * overrides is not an error. */
#include "cli.h"
#include "cpdl/tools.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int take(int argc, char **argv, int *i, const char *eq, const char **value) {
  if (eq) {
    *value = eq + 1;
    return 0;
  }
  if (*i + 1 >= argc)
    return -1;
  *value = argv[++*i];
  return 0;
}

int cpdl_cli_options(int argc, char **argv, cpdl_config_t *cfg, cli_flags_t *flags,
                     const char *usage) {
  memset(flags, 0, sizeof *flags);
  flags->reps = 0;
  cpdl_config_init(cfg);
  /* Configuration keys given as options, applied after the environment:
   * an option wins, and its key's CPDL_* variable is not even parsed. */
  int n_set = 0;
  char (*set_keys)[64] = calloc((size_t)argc + 1, sizeof *set_keys);
  const char **set_values = calloc((size_t)argc + 1, sizeof *set_values);
  const char **set_args = calloc((size_t)argc + 1, sizeof *set_args);
  const char **skip = calloc((size_t)argc + 1, sizeof *skip);
  int rc = 0;
  if (!set_keys || !set_values || !set_args || !skip) {
    fprintf(stderr, "cpdl: out of memory\n");
    rc = 2;
    goto out;
  }
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      fputs(usage, stdout);
      rc = 1;
      goto out;
    }
    if (strncmp(arg, "--", 2) != 0) {
      fprintf(stderr, "cpdl: unexpected argument '%s'\n%s", arg, usage);
      rc = 2;
      goto out;
    }
    char key[64];
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
    if (len >= sizeof key) {
      fprintf(stderr, "cpdl: option too long: %s\n", arg);
      rc = 2;
      goto out;
    }
    memcpy(key, arg + 2, len);
    key[len] = '\0';
    for (char *p = key; *p; p++)
      if (*p == '-')
        *p = '_';
    const char *value = NULL;
    if (strcmp(key, "json") == 0) {
      flags->json = true;
    } else if (strcmp(key, "report_binding") == 0) {
      flags->report_binding = true;
    } else if (strcmp(key, "quiet") == 0) {
      flags->quiet = true;
    } else if (strcmp(key, "touch") == 0) {
      flags->touch = true;
    } else {
      if (take(argc, argv, &i, eq, &value)) {
        fprintf(stderr, "cpdl: option --%s needs a value\n", arg + 2);
        rc = 2;
        goto out;
      }
      if (strcmp(key, "dump") == 0)
        flags->dump = value;
      else if (strcmp(key, "dump_collated") == 0)
        flags->dump_collated = value;
      else if (strcmp(key, "save_state") == 0)
        flags->save_state = value;
      else if (strcmp(key, "resume") == 0)
        flags->resume = value;
      else if (strcmp(key, "ways") == 0)
        flags->ways = value;
      else if (strcmp(key, "seq_lens") == 0)
        flags->seq_lens = value;
      else if (strcmp(key, "reps") == 0)
        flags->reps = atoi(value);
      else {
        memcpy(set_keys[n_set], key, sizeof key);
        set_values[n_set] = value;
        set_args[n_set] = arg + 2;
        skip[n_set] = set_keys[n_set];
        n_set++;
      }
    }
  }
  if (cpdl_tools_config_from_env_except(cfg, skip, n_set)) {
    fprintf(stderr, "cpdl: %s\n", cpdl_last_error());
    rc = 2;
    goto out;
  }
  for (int k = 0; k < n_set; k++)
    if (cpdl_config_set(cfg, set_keys[k], set_values[k])) {
      fprintf(stderr, "cpdl: --%s: %s\n", set_args[k], cpdl_last_error());
      rc = 2;
      goto out;
    }
out:
  free(set_keys);
  free(set_values);
  free(set_args);
  free(skip);
  return rc;
}
