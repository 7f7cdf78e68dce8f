/* options.c — command-line options shared by `cpdl run` and `cpdl bench`.
 * Configuration keys are not listed here: config.c owns their names, so a
 * new key is a new option with no change to the CLI. */
#include "cli.h"

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
  if (cpdl_config_from_env(cfg)) {
    fprintf(stderr, "cpdl: %s\n", cpdl_last_error());
    return 2;
  }
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      fputs(usage, stdout);
      exit(0);
    }
    if (strncmp(arg, "--", 2) != 0) {
      fprintf(stderr, "cpdl: unexpected argument '%s'\n%s", arg, usage);
      return 2;
    }
    char key[64];
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
    if (len >= sizeof key) {
      fprintf(stderr, "cpdl: option too long: %s\n", arg);
      return 2;
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
        return 2;
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
      else if (cpdl_config_set(cfg, key, value)) {
        fprintf(stderr, "cpdl: --%s: %s\n", arg + 2, cpdl_last_error());
        return 2;
      }
    }
  }
  return 0;
}
