/* gpt_index.h — Megatron-LM's GPTDataset and BlendedDataset indices, built in
 * C from the same rules (megatron/core/datasets gpt_dataset.py,
 * blended_dataset.py, blended_megatron_dataset_builder.py, helpers.cpp):
 *
 *  mid-level (one prefix, one split): the split's sequences [beg, end), the
 *  epoch count, the separate-final-epoch rule (threshold 0.80), the document
 *  index (epochs of the split's sequence ids, RandomState(seed).shuffle'd),
 *  and the shuffle index (a shuffled arange over the samples). Megatron's
 *  sample index is not stored: sample j is the seq_len + add_extra tokens at
 *  token position j * seq_len of the document index's token stream, which is
 *  what build_sample_idx's (document, offset) pairs denote. A checkpoint of
 *  the stream's token count every GPT_CKPT documents finds that position by
 *  binary search plus a short scan.
 *
 *  top-level (a weighted blend): dataset_index from the greedy largest-error
 *  rule of helpers.cpp build_blending_indices, stored as uint16; the
 *  dataset_sample_index is a running count per dataset, kept at checkpoints.
 */
#ifndef CPDL_GPT_INDEX_H
#define CPDL_GPT_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define GPT_CKPT 64          /* documents per token-count checkpoint */
#define GPT_BLEND_CKPT 256   /* blend samples per count checkpoint */

typedef struct gpt_mid {
  const uint8_t *lengths;    /* int32 sequence lengths of the .idx (unaligned) */
  int64_t beg, end;          /* the split's sequences */
  int64_t num_samples;       /* requested; -1: one epoch (Megatron's None) */
  int64_t seq_len;
  int extra;                 /* add_extra_token_to_sequence */
  int64_t tokens_per_epoch, epochs;
  int separate_final_epoch;
  int64_t samples_sans_final;
  int64_t n_doc;             /* document index entries: epochs * (end - beg) */
  int32_t *doc_index;
  int64_t *ckpt;             /* tokens before doc_index[k * GPT_CKPT] */
  int64_t n_samples;         /* Megatron's len(): sample_index rows - 1 */
  uint32_t *shuffle32;       /* shuffle index, uint32 as Megatron's when it fits */
  int64_t *shuffle64;
} gpt_mid_t;

/** Megatron's split bookends for `n` sequences from the normalized split
 *  vector: the range of split `which` (0 train, 1 valid, 2 test).
 *  \return 1 when the split exists, 0 when its weight is 0 (Megatron: None). */
int gpt_split_range(const double split[3], int which, int64_t n, int64_t *beg, int64_t *end);

/** numpy's float64 sum (pairwise, 8-way unrolled) and normalize(). */
double gpt_np_sum(const double *a, int64_t n);
void gpt_np_normalize(const double *in, int64_t n, double *out);

/** Build a mid-level dataset's indices. \return 0, or a negative errno / -1
 *  with a message in err. */
int gpt_mid_build(gpt_mid_t *m, const uint8_t *lengths, int64_t beg, int64_t end,
                  int64_t num_samples, int64_t seq_len, int extra, uint32_t seed,
                  char *err, size_t errlen);
/** Where sample i (0 <= i < n_samples) starts: document index position and
 *  token offset in that document. */
void gpt_mid_locate(const gpt_mid_t *m, int64_t i, int64_t *doc_pos, int64_t *offset);
int32_t gpt_mid_length(const gpt_mid_t *m, int64_t sequence);
void gpt_mid_free(gpt_mid_t *m);

typedef struct gpt_blend {
  int n;                     /* datasets */
  int64_t size;
  double *weights;           /* as BlendedDataset holds them (normalized) */
  uint16_t *dataset_index;
  int64_t *ckpt;             /* counts [size / GPT_BLEND_CKPT + 1][n] */
  int64_t *totals;           /* samples drawn per dataset */
} gpt_blend_t;

int gpt_blend_build(gpt_blend_t *b, const double *weights, int n, int64_t size, char *err,
                    size_t errlen);
void gpt_blend_lookup(const gpt_blend_t *b, int64_t i, int *dataset, int64_t *sample);
void gpt_blend_free(gpt_blend_t *b);

#endif
