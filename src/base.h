/* base.h — the internals of the MPI-free bottom layer (include/cpdl/prep.h):
 * the thread-local error message, overflow-checked sizes and float16/bfloat16
 * conversion. What error.c, dtype.c, prep.c and prep_exec.c — the objects of
 * libcpdl_prep.so — may use; nothing here may need MPI. Never installed.
 */
#ifndef CPDL_BASE_H
#define CPDL_BASE_H

#include "cpdl/prep.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CPDL__ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((size_t)(a) - 1))
#define CPDL__CACHE_LINE 64

/* ---- error.c --------------------------------------------------------------
 * Thread-local last-error message. cpdl__error() formats the message and
 * returns `code`, so call sites read `return cpdl__error(CPDL_EFIELD, ...)`. */
int cpdl__error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message with "<prefix>: " and return code. */
int cpdl__error_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cpdl__error_clear(void);
/* Overflow-checked size arithmetic: return false on overflow. */
bool cpdl__mul_size(size_t a, size_t b, size_t *out);
bool cpdl__add_size(size_t a, size_t b, size_t *out);

/* ---- dtype.c --------------------------------------------------------------
 * float16 / bfloat16 <-> float32, round to nearest even. */
uint16_t cpdl__dtype_f32_to_f16(float f);
float cpdl__dtype_f16_to_f32(uint16_t h);
uint16_t cpdl__dtype_f32_to_bf16(float f);
float cpdl__dtype_bf16_to_f32(uint16_t h);

/* prep.c: a plan for batches already cut per rank (schedule=dynamic, whose
 * feed writes every CP rank's block itself): inputs[0..n_rank_inputs) have a
 * leading dim cp_size and become per-rank fields of the rest of their shape
 * (rank r's block gets row r, copied); the other inputs are shared, whole.
 * Executed by cpdl_prep_execute(_part) like any plan. \return 0, CPDL_EARG,
 * CPDL_EFIELD (a per-rank input without its leading cp_size), CPDL_EDTYPE,
 * CPDL_EOVERFLOW, -ENOMEM. */
int cpdl__prep_plan_blocks(const cpdl_tensor_t *inputs, int n_inputs, int n_rank_inputs,
                           int cp_size, cpdl_prep_plan_t **out);

#endif /* CPDL_BASE_H */
