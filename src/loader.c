/* loader.c — the public loader object: ties mesh, segment, ring, feed,
 * preparation and placement together (its fields: loader_impl.h; the
 * resume-state protocol, save and restore: resume.c).
 *
 * Invariants:
 *  - Only the group's leader writes data; it writes a slot only after every
 *    consumer released it (ring) and publishes it only when complete.
 *  - Loader threads never use the control plane (coll.c: the caller's
 *    out-of-band allgather, MPI by default); every collective happens on the
 *    caller's thread in open/save/restore/close, each one followed by
 *    cpdl__agree() so all ranks return the same result.
 *  - After a peer died (CPDL_EPEER) the loader is "failed": close then cleans
 *    up locally without collectives, since a collective would hang.
 *  - The host's pids are exchanged right after the mesh exists; from then on
 *    every collective of open/save/restore/close runs watched (coll.c), so a rank
 *    of this host dying inside them gives CPDL_EPEER, never a hang. A failed
 *    open frees everything locally; a living leader unlinks its segment.
 *  - A loader belongs to the process that opened it (owner_pid). In a child
 *    after fork every call fails naming the fork, and close only drops the
 *    child's copy of the mappings: no ring write, no collective, no unlink,
 *    no join of threads that exist only in the parent.
 */
#include "internal.h"
#include "loader_impl.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

/* ------------------------------------------------------------------------- */
/* Ownership                                                                  */
/* ------------------------------------------------------------------------- */

/* A child after fork (a DataLoader worker, a subprocess helper) has a copy of
 * the loader but none of its threads, and the segment's ring is the parent's:
 * anything it did there would act on the parent's job. */
int cpdl__loader_check_owner(const cpdl_loader_t *L, const char *fn) {
  pid_t me = getpid();
  if (L->owner_pid == me)
    return 0;
  return cpdl__error(CPDL_ESTATE,
                     "%s: this loader was opened by process %d and this process (%d) is a fork "
                     "of it; a loader belongs to the process that opened it (open one in the "
                     "child, or use it in the parent only)",
                     fn, (int)L->owner_pid, (int)me);
}

/* ------------------------------------------------------------------------- */
/* The view mapping's lifetime                                                */
/* ------------------------------------------------------------------------- */

/* The loader holds one reference from open to close; bindings that export
 * views add theirs. Whoever drops the last unmaps (acq_rel: every use of the
 * memory by other holders happens before the munmap). */
struct cpdl_mapping {
  void *base;
  size_t size;
  _Atomic int refs;
};

cpdl_mapping_t *cpdl_loader_mapping_retain(cpdl_loader_t *L) {
  if (!L || !L->view_map) {
    cpdl__error(CPDL_EARG, "cpdl_loader_mapping_retain: %s", L ? "the loader has no mapping "
                "(out of memory at open)" : "NULL loader");
    return NULL;
  }
  if (cpdl__loader_check_owner(L, "cpdl_loader_mapping_retain"))
    return NULL;
  atomic_fetch_add_explicit(&L->view_map->refs, 1, memory_order_relaxed);
  return L->view_map;
}

void cpdl_mapping_release(cpdl_mapping_t *map) {
  if (!map || atomic_fetch_sub_explicit(&map->refs, 1, memory_order_acq_rel) != 1)
    return;
  munmap(map->base, map->size);
  free(map);
}

/* close in a forked child: drop this process's copy of the mappings and fds,
 * nothing else. The rest of the copy (feed, threads' state, the control
 * plane) is left as it is: it may hold locks of threads that do not exist
 * here, and the parent still uses the originals. */
static void forked_close(cpdl_loader_t *L) {
  if (L->view_map) {
    L->view_shm.base = NULL; /* the mapping's references unmap it */
    cpdl_mapping_release(L->view_map);
    L->view_map = NULL;
  }
  L->shm.owner = false; /* never unlink the parent's segment */
  cpdl__shm_close(&L->view_shm);
  cpdl__shm_close(&L->shm);
}

/* ------------------------------------------------------------------------- */
/* Liveness                                                                   */
/* ------------------------------------------------------------------------- */

/* step: the step being waited for (a rank on another host that left before
 * it fails the wait), or UINT64_MAX (the loader threads: deaths only). */
static int check_peers(cpdl_loader_t *L, uint64_t step) {
  /* A rank that saw a death first posts it and may then exit: its own
   * exit must not be mistaken for the cause, so the posted verdict wins. */
  int posted = cpdl__ring_posted_error(L->cring);
  if (posted)
    return posted;
  int remote = cpdl__live_check(L->live, step);
  if (remote)
    return remote;
  for (int g = 0; g < L->mesh.me.group_size; g++) {
    const cpdl__peer_t *p = L->group_peer[g];
    if (!p || !cpdl__pid_dead(p->pid, p->pidfd))
      continue;
    return cpdl__error(CPDL_EPEER,
                       "rank %d (group %d rank %d, pid %d) died; cpdl cannot continue this job "
                       "(restart it; check that rank's log for the cause)",
                       L->mesh.group_world_ranks[g], L->mesh.me.group, g, (int)p->pid);
  }
  return 0;
}

/* The consumer's waits run on the caller's thread, which owns next_step. */
static int consumer_alive(void *arg) {
  cpdl_loader_t *L = arg;
  return check_peers(L, L->next_step);
}

static int producer_alive(void *arg) { return check_peers(arg, UINT64_MAX); }

/* ------------------------------------------------------------------------- */
/* Open                                                                       */
/* ------------------------------------------------------------------------- */

/* What the leader sends its group over the control plane (the trusted channel). */
typedef struct segment_info {
  int32_t rc;
  char name[CPDL__SHM_NAME_MAX];
  uint64_t size;
  uint64_t ctrl_bytes;
  uint64_t nonce;
  uint64_t config_hash;
  cpdl_tools_memory_t memory; /* the leader's sizing (sizing.c), reported by every member */
} segment_info_t;

/* Leader: open the feed, plan the layout from its spec (no batch is
 * produced), create the segment and write its header. */
static int leader_create(cpdl_loader_t *L, segment_info_t *info) {
  int rc = cpdl__feed_open(&L->cfg, L->mesh.me.dp_rank, L->mesh.me.dp_size, &L->feed);
  if (rc)
    return rc;
  if ((rc = cpdl__feed_cursor(L->feed, L->start_words)))
    return rc;
  /* schedule=dynamic: the group table's world ranks, and the blocks this group holds */
  if ((rc = cpdl__feed_set_mesh(L->feed, L->mesh.world_at, L->mesh.local_cp, L->mesh.n_local_cp)))
    return rc;
  cpdl_tensor_t inputs[CPDL_MAX_FIELDS];
  int n_inputs = CPDL_MAX_FIELDS;
  if ((rc = cpdl__feed_spec(L->feed, inputs, &n_inputs)))
    return rc;
  for (int pass = 0; pass < 2 && !L->data_batch; pass++)
    for (int i = 0; i < n_inputs && !L->data_batch; i++)
      if (inputs[i].ndim >= 2 &&
          (pass || strcmp(inputs[i].name, cpdl_field_name(CPDL_FIELD_INPUT_IDS)) == 0)) {
        L->data_batch = inputs[i].shape[0];
        L->data_seq_len = inputs[i].shape[1];
      }
  cpdl_prep_params_t params;
  cpdl__config_prep_params(&L->cfg, &params);
  int rank_fields = cpdl__feed_rank_fields(L->feed); /* dynamic: the feed cut the blocks */
  if (rank_fields) { /* its per-rank fields are [cp, 1, block]: a replica's row of seq_len */
    L->data_batch = 1;
    L->data_seq_len = L->cfg.seq_len;
  }
  rc = rank_fields ? cpdl__prep_plan_blocks(inputs, n_inputs, rank_fields, L->cfg.cp, &L->plan)
                   : cpdl_prep_plan_create(inputs, n_inputs, &params, &L->plan);
  if (rc)
    return cpdl__error_prefix(rc, "planning the batch layout");
  /* The first epoch must hold a whole global batch. */
  uint64_t any = 0;
  if ((rc = cpdl__feed_steps(L->feed, 1, 1, &any)))
    return rc;
  if (any == 0)
    return cpdl__error(CPDL_ESOURCE, "data source '%s' yields no batch at all: its first epoch "
                       "holds no whole global batch of dp %d x batch %d rows of seq_len %lld; "
                       "use more data, a smaller batch or seq_len, fewer replicas or "
                       "drop_last=0", L->cfg.source, L->mesh.me.dp_size, L->cfg.batch,
                       (long long)L->cfg.seq_len);
  /* The run's end: the steps its first `epochs` passes hold (the same on
   * every replica: the order is global). */
  uint64_t epochs = cpdl__config_epochs(&L->cfg);
  if (epochs && (rc = cpdl__feed_steps(L->feed, epochs, L->end_step, &L->end_step)))
    return rc;

  int n_fields = cpdl_prep_plan_nfields(L->plan);
  if (n_fields > CPDL_MAX_FIELDS)
    return cpdl__error(CPDL_EFIELD, "the batch has %d fields; cpdl supports %d", n_fields,
                       CPDL_MAX_FIELDS);
  cpdl_prep_field_t fields[CPDL_MAX_FIELDS];
  for (int i = 0; i < n_fields; i++)
    fields[i] = *cpdl_prep_plan_field(L->plan, i);
  long page = sysconf(_SC_PAGESIZE);
  size_t rank_block = CPDL__ALIGN_UP(cpdl_prep_plan_rank_bytes(L->plan), (size_t)page);
  size_t shared_block = CPDL__ALIGN_UP(cpdl_prep_plan_shared_bytes(L->plan), (size_t)page);
  /* Slots and collate sets by bytes and need (sizing.c); the feed drops its
   * second output set before the first step when the sizing has no room for it. */
  cpdl_tools_memory_t *mem = &info->memory;
  int max_sets = cpdl__feed_double_buffered(L->feed)
                     ? cpdl__producer_collate_sets(cpdl_prep_plan_rank_bytes(L->plan) *
                                                       (size_t)L->mesh.n_local_cp +
                                                       cpdl_prep_plan_shared_bytes(L->plan),
                                                   L->cfg.threads)
                     : 1;
  if ((rc = cpdl__sizing_plan(&L->cfg, rank_block, shared_block, L->mesh.n_local_cp, max_sets,
                              mem)))
    return rc;
  if (mem->collate_sets < 2)
    cpdl__feed_single_buffer(L->feed);
  mem->collate_bytes = cpdl__feed_buffer_bytes(L->feed, &mem->collate_set_bytes);
  cpdl__ring_geometry_t geo = {
      .n_slots = (uint32_t)mem->slots,
      .n_regions = (uint32_t)L->mesh.n_local_cp,
      .n_consumers = (uint32_t)L->mesh.me.group_size,
      .n_fields = (uint32_t)n_fields,
      .slot_bytes = rank_block,
      .shared_slot_bytes = shared_block,
  };
  rc = cpdl__ring_sizes(&geo, &L->ctrl_bytes, &L->total_bytes);
  if (rc)
    return rc;
  mem->ctrl_bytes = L->ctrl_bytes;
  mem->segment_bytes = L->total_bytes;
  mem->group_bytes = mem->segment_bytes + mem->collate_bytes;
  rc = cpdl__shm_create(L->total_bytes, &L->shm);
  if (rc)
    return rc;
  if ((rc = cpdl__fault("after_create", L->mesh.me.world_rank)))
    return rc;
  if ((rc = cpdl__fault("after_reserve", L->mesh.me.world_rank)))
    return rc;
  /* Place each local CP shard's region near its consumers before the
   * header write touches anything else (first touch decides placement). */
  for (uint32_t r = 0; r < geo.n_regions; r++)
    cpdl__pin_region(L->pin, (int)r,
                     (char *)L->shm.base + cpdl__ring_block_offset(&geo, L->ctrl_bytes, r, 0),
                     cpdl__ring_region_bytes(&geo));
  if (getrandom(&L->nonce, sizeof L->nonce, 0) != (ssize_t)sizeof L->nonce)
    return cpdl__error(-errno, "getrandom failed for the segment nonce: %s", strerror(errno));
  rc = cpdl__ring_init(L->shm.base, L->total_bytes, &geo, fields, L->nonce, L->config_hash,
                       (int32_t)getpid(), L->first_step, &L->ring);
  if (rc)
    return rc;
  snprintf(info->name, sizeof info->name, "%s", L->shm.name);
  info->size = L->total_bytes;
  info->ctrl_bytes = L->ctrl_bytes;
  info->nonce = L->nonce;
  info->config_hash = L->config_hash;
  return 0;
}

static int consumer_attach(cpdl_loader_t *L, const segment_info_t *info) {
  if (!L->mesh.is_leader && info->config_hash != L->config_hash)
    return cpdl__error(CPDL_ECONFIG, "the leader's configuration hash differs from this rank's");
  L->total_bytes = info->size;
  L->ctrl_bytes = info->ctrl_bytes;
  L->nonce = info->nonce;
  L->memory = info->memory;
  int rc = cpdl__shm_attach(info->name, info->size, info->ctrl_bytes, true, &L->view_shm);
  if (rc)
    return rc;
  return cpdl__ring_attach(L->view_shm.base, info->size, info->nonce, info->config_hash,
                           &L->cring);
}

static void build_view_table(cpdl_loader_t *L) {
  const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(L->cring);
  const cpdl_prep_field_t *fields = cpdl__ring_fields(L->cring);
  L->n_fields = (int)geo->n_fields;
  for (int i = 0; i < L->n_fields; i++) {
    snprintf(L->view_names[i], CPDL_NAME_MAX, "%s", fields[i].name);
    cpdl_view_field_t *v = &L->view[i];
    v->name = L->view_names[i];
    v->dtype = fields[i].dtype;
    v->ndim = fields[i].ndim;
    memcpy(v->shape, fields[i].shape, sizeof v->shape);
    v->nbytes = fields[i].nbytes;
    v->data = NULL;
  }
}

/* Everything but the mesh and the watch: purely local (threads, mappings,
 * the leader's unlink, feed, plan, pin). Idempotent. */
static void loader_release(cpdl_loader_t *L) {
  cpdl__producer_stop(L->producer);
  L->producer = NULL;
  if (L->cring)
    cpdl__ring_free(L->cring);
  L->cring = NULL;
  if (L->ring)
    cpdl__ring_free(L->ring);
  L->ring = NULL;
  if (L->view_map) {
    /* The mapping is the references' to unmap; close only the fd here. */
    L->view_shm.base = NULL;
    cpdl_mapping_release(L->view_map);
    L->view_map = NULL;
  }
  cpdl__shm_close(&L->view_shm);
  /* The creator unlinks here if nobody did: a failed open leaves nothing. */
  cpdl__shm_close(&L->shm);
  if (L->feed)
    cpdl__feed_close(L->feed);
  L->feed = NULL;
  if (L->plan)
    cpdl_prep_plan_destroy(L->plan);
  L->plan = NULL;
  if (L->pin)
    cpdl__pin_free(L->pin);
  L->pin = NULL;
}

/* Local too: Open MPI's MPI_Comm_free (the MPI control plane's dup) sends nothing, so
 * they are safe with a dead member and an abandoned request (tested by the
 * fault matrix under --enable-recovery). Keeps the current error message. */
static void loader_free(cpdl_loader_t *L) {
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", cpdl_last_error());
  loader_release(L);
  cpdl__live_stop(L->live); /* before the watch and the hosts it reads */
  L->live = NULL;
  L->ctl.hosts = NULL;
  free(L->hosts);
  cpdl__watch_free(&L->watch);
  cpdl__mesh_free(&L->mesh);
  cpdl__oob_mpi_free(&L->mpi_oob);
  free(L->dump_collated);
  free(L);
  cpdl__error(0, "%s", msg);
}

static int validate_config(const cpdl_config_t *cfg) {
  if (!cfg || cfg->struct_size < sizeof(cpdl_config_t))
    return cpdl__error(CPDL_EARG, "cpdl_config_t not initialized (call cpdl_config_init first)");
  if (cfg->cp < 1 || cfg->tp < 1 || cfg->slots < 0 || cfg->slots == 1 || cfg->batch < 1 ||
      cfg->seq_len < 1 || cfg->ring_bytes < 0)
    return cpdl__error(CPDL_EARG, "invalid configuration: cp=%d tp=%d slots=%d batch=%d seq_len=%lld "
                       "(need cp, tp, batch, seq_len >= 1 and slots 0 (sized by need) or >= 2)",
                       cfg->cp, cfg->tp, cfg->slots, cfg->batch, (long long)cfg->seq_len);
  if (cfg->threads < 1 || cfg->threads > CPDL__MAX_THREADS)
    return cpdl__error(CPDL_EARG, "threads=%d is out of range 1..%d", cfg->threads, CPDL__MAX_THREADS);
  if (cfg->mode == CPDL_MODE_THD &&
      (strcmp(cfg->collate, "pack") != 0 || cfg->batch != 1 || cfg->seq_len % (2 * cfg->cp) != 0))
    return cpdl__error(CPDL_EARG, "mode=thd needs collate=pack, batch=1 and seq_len a multiple of "
                       "2*cp = %d (each document is padded to a multiple of 2*cp); got collate=%s "
                       "batch=%d seq_len=%lld", 2 * cfg->cp, cfg->collate, cfg->batch,
                       (long long)cfg->seq_len);
  return 0;
}

/* Open after the mesh and the watch exist, with the watch installed: every
 * collective here either completes or returns CPDL_EPEER. After an EPEER
 * nothing more is collective: the caller frees locally. */
static int open_watched(cpdl_loader_t *L, const cpdl_config_t *cfg) {
  int rc = cpdl__config_agree(&L->mesh.world, cfg);
  if (rc)
    return rc;
  if (L->mesh.me.group_size > MAX_GROUP)
    return cpdl__agree(&L->mesh.world, cpdl__error(CPDL_EMESH, "group of %d ranks exceeds %d",
                                                 L->mesh.me.group_size, MAX_GROUP));
  /* The group's members among the host's watched ranks (for next()). */
  for (int g = 0; g < L->mesh.me.group_size; g++)
    L->group_peer[g] = g == L->mesh.me.group_rank
                           ? NULL
                           : cpdl__watch_find(&L->watch, L->mesh.group_world_ranks[g]);

  /* Placement plan (collective over the node): before the segment exists,
   * so its regions can be bound before first touch. */
  int local = cpdl__pin_setup(&L->mesh, cfg->pin, cfg->threads, &L->pin);
  rc = local == CPDL_EPEER ? local : cpdl__agree(&L->mesh.world, local);
  if (rc)
    return rc;

  /* Leader creates; its status, name, size and nonce reach the group over
   * the control plane (R3: nobody waits for a broadcast that never comes). */
  segment_info_t info;
  memset(&info, 0, sizeof info);
  if (L->mesh.is_leader) {
    info.rc = leader_create(L, &info);
    if (!info.rc)
      info.rc = cpdl__fault("before_send_name", L->mesh.me.world_rank);
  }
  rc = cpdl__agree(&L->mesh.world, L->mesh.is_leader ? info.rc : 0);
  if (rc)
    return rc;
  /* Every replica ends on the same step: the leaders' count (equal on every
   * leader, the order being global; the others hold UINT64_MAX or steps=).
   * Without epochs that is steps= on every rank (the configuration is
   * agreed): nothing to exchange. */
  if (cpdl__config_epochs(&L->cfg)) {
    int64_t end = L->end_step > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)L->end_step;
    if ((rc = cpdl__coll_min_i64(&L->mesh.world, &end, 1, "open (the run's end step)")))
      return rc;
    L->end_step = end == INT64_MAX ? UINT64_MAX : (uint64_t)end;
  }
  if (L->end_step == 0)
    return cpdl__error(CPDL_ESOURCE, "data source '%s': %llu epoch(s) "
                       "hold no whole step of batch=%d rows of seq_len=%lld tokens; use more "
                       "data, more epochs, a smaller batch or seq_len, or fewer replicas",
                       L->cfg.source, (unsigned long long)cpdl__config_epochs(&L->cfg),
                       L->cfg.batch, (long long)L->cfg.seq_len);
  rc = cpdl__coll_bcast(&L->mesh.group, &info, sizeof info, 0,
                        "open (the segment name's broadcast)");
  if (rc)
    return rc;
  local = consumer_attach(L, &info); /* the leader too: its read-only view mapping */
  rc = cpdl__agree(&L->mesh.world, local);
  if (rc)
    return rc;

  /* Every member registers its pid in the segment (the ring's record). */
  local = cpdl__fault("attach", L->mesh.me.world_rank);
  if (!local)
    cpdl__ring_register(L->cring, (uint32_t)L->mesh.me.group_rank, (int32_t)getpid(),
                        (int32_t)L->mesh.me.world_rank);

  /* The whole group has mapped the segment: unlink it now, so a crash from
   * here on leaves nothing in /dev/shm (R5). */
  rc = cpdl__coll_barrier(&L->mesh.group, "open (the group's barrier before unlink)");
  if (rc == CPDL_EPEER)
    return rc;
  if (rc && !local)
    local = rc;
  if (!local && L->mesh.is_leader) {
    local = cpdl__fault("before_unlink", L->mesh.me.world_rank);
    if (!local)
      local = cpdl__shm_unlink(&L->shm);
  }
  return cpdl__agree(&L->mesh.world, local);
}

/* A job across hosts (collective): every rank's hostname for messages, and
 * — on the MPI control plane with MPI_THREAD_MULTIPLE everywhere — the
 * remote liveness thread, so a death on another host ends every wait
 * (R27). On one host the pid watch sees everything: nothing to start. */
static int start_liveness(cpdl_loader_t *L) {
  if (L->mesh.host.size == L->mesh.me.world_size)
    return 0;
  char mine[CPDL__HOST_NAME_MAX] = {0};
  gethostname(mine, sizeof mine);
  L->hosts = calloc((size_t)L->mesh.me.world_size, CPDL__HOST_NAME_MAX);
  int local = L->hosts ? 0 : cpdl__error(-ENOMEM, "out of memory for %d hostnames",
                                         L->mesh.me.world_size);
  char *all = L->hosts ? L->hosts : NULL;
  char *spare = all ? NULL : calloc((size_t)L->mesh.me.world_size, CPDL__HOST_NAME_MAX);
  int rc = cpdl__coll_allgather(&L->mesh.world, mine, sizeof mine, all ? all : spare,
                                "open (the hostnames)");
  free(spare);
  if (rc)
    return rc;
  rc = cpdl__agree(&L->mesh.world, local);
  if (rc)
    return rc;
  L->ctl.hosts = L->hosts;
  /* Everyone, or no one: a rank without the thread sends no heartbeat, and
   * its successor would take the silence for a death. */
  MPI_Comm comm = cpdl__oob_mpi_comm(&L->ctl.oob);
  int provided = 0;
  if (comm != MPI_COMM_NULL)
    MPI_Query_thread(&provided);
  const char *off = getenv("CPDL_LIVENESS");
  int64_t able = comm != MPI_COMM_NULL && provided == MPI_THREAD_MULTIPLE &&
                 !(off && strcmp(off, "0") == 0);
  if ((rc = cpdl__coll_min_i64(&L->mesh.world, &able, 1, "open (the liveness agreement)")))
    return rc;
  if (!able)
    return 0;
  local = cpdl__live_start(comm, L->mesh.me.world_rank, L->mesh.me.world_size, &L->watch,
                           L->hosts, &L->live);
  L->watch.live = L->live;
  return cpdl__agree(&L->mesh.world, local);
}

/* Takes over *mpi_oob (may be NULL): freed with the loader, or here on failure. */
static int open_on(const cpdl_oob_t *oob, cpdl_oob_t *mpi_oob, const cpdl_layout_t *layout,
                   const cpdl_config_t *cfg, cpdl_loader_t **out) {
  cpdl_loader_t *L = calloc(1, sizeof *L);
  int local = L ? 0 : cpdl__error(-ENOMEM, "out of memory allocating the loader");
  cpdl__ctl_t spare; /* nothing can be agreed without a control plane */
  int rc = cpdl__ctl_init(oob, L ? &L->ctl : &spare);
  if (rc) {
    free(L);
    cpdl__oob_mpi_free(mpi_oob);
    return rc;
  }
  cpdl__team_t world;
  cpdl__team_world(L ? &L->ctl : &spare, &world);
  if (!local)
    local = validate_config(cfg);
  /* Even a local argument error must be agreed, or the other ranks hang. */
  rc = cpdl__agree(&world, local);
  if (rc) {
    free(L);
    cpdl__oob_mpi_free(mpi_oob);
    return rc;
  }
  if (mpi_oob)
    L->mpi_oob = *mpi_oob;
  L->cfg = *cfg;
  L->owner_pid = getpid();
  L->shm.fd = -1;
  L->view_shm.fd = -1;
  L->config_hash = cpdl__config_hash(cfg);
  L->end_step = cfg->steps > 0 ? (uint64_t)cfg->steps : UINT64_MAX;

  /* Up to here, and inside mesh_build, collectives are not watched: no pid
   * is known yet, so a death is the launcher's to handle. */
  rc = cpdl__mesh_build(&L->ctl, layout, cfg->cp, cfg->tp, cfg->order, &L->mesh);
  if (rc) {
    cpdl__oob_mpi_free(&L->mpi_oob);
    free(L);
    return rc;
  }
  /* First thing after the mesh: the host's pids, then everything runs
   * watched. */
  local = cpdl__watch_build(&L->mesh.host, &L->watch);
  const cpdl__watch_t *previous = cpdl__watch_install(&L->watch);
  rc = cpdl__agree(&L->mesh.world, local);
  if (!rc)
    rc = start_liveness(L);
  if (!rc)
    rc = open_watched(L, cfg);
  cpdl__watch_install(previous);
  if (rc) {
    loader_free(L); /* local only; a living creator unlinks its segment */
    return rc;
  }
  build_view_table(L);
  /* Without memory for it the loader still works; only retain fails. */
  L->view_map = malloc(sizeof *L->view_map);
  if (L->view_map) {
    L->view_map->base = L->view_shm.base;
    L->view_map->size = L->view_shm.size;
    atomic_init(&L->view_map->refs, 1);
  }
  L->next_step = L->first_step;
  *out = L;
  return 0;
}

/* Every collective of open carries CPDL__OP_OPEN in its header. */
static int open_as_op(const cpdl_oob_t *oob, cpdl_oob_t *mpi_oob, const cpdl_layout_t *layout,
                      const cpdl_config_t *cfg, cpdl_loader_t **out) {
  cpdl__op_t previous = cpdl__coll_op(CPDL__OP_OPEN);
  int rc = open_on(oob, mpi_oob, layout, cfg, out);
  cpdl__coll_op(previous);
  return rc;
}

int cpdl_loader_open_oob(const cpdl_oob_t *oob, const cpdl_layout_t *layout,
                         const cpdl_config_t *cfg, cpdl_loader_t **out) {
  if (!out)
    return cpdl__error(CPDL_EARG, "cpdl_loader_open_oob: out is NULL");
  *out = NULL;
  return open_as_op(oob, NULL, layout, cfg, out);
}

int cpdl_loader_open_mpi(MPI_Comm comm, const cpdl_layout_t *layout, const cpdl_config_t *cfg,
                         cpdl_loader_t **out) {
  if (!out)
    return cpdl__error(CPDL_EARG, "cpdl_loader_open: out is NULL");
  *out = NULL;
  cpdl_oob_t oob;
  int rc = cpdl__oob_mpi_create(comm, &oob);
  if (rc)
    return rc;
  return open_as_op(&oob, &oob, layout, cfg, out);
}

int cpdl_loader_open(MPI_Comm comm, const cpdl_config_t *cfg, cpdl_loader_t **out) {
  return cpdl_loader_open_mpi(comm, NULL, cfg, out);
}

int cpdl_loader_open_world(const cpdl_config_t *cfg, cpdl_loader_t **out) {
  return cpdl_loader_open(MPI_COMM_WORLD, cfg, out);
}

/* ------------------------------------------------------------------------- */
/* Next / release                                                             */
/* ------------------------------------------------------------------------- */

/* The first next() (or wait) starts the leader's threads: a state restore
 * before it must not race with prefetching. A failed start is posted, so
 * the consumers get the error instead of waiting. */
static int ensure_started(cpdl_loader_t *L) {
  if (L->started)
    return 0;
  L->started = true;
  if (!L->mesh.is_leader)
    return 0;
  cpdl__producer_args_t args = {
      .ring = L->ring,
      .feed = L->feed,
      .plan = L->plan,
      .pin = L->pin,
      .local_cp = L->mesh.local_cp,
      .world_rank = L->mesh.me.world_rank,
      .group = L->mesh.me.group,
      .first_step = L->first_step,
      .end_step = L->end_step,
      .n_threads = L->cfg.threads,
      .dump_collated = L->dump_collated,
      .alive = producer_alive,
      .alive_arg = L,
  };
  int rc = cpdl__producer_start(&args, &L->producer);
  if (rc)
    cpdl__ring_post_error(L->cring, rc, cpdl_last_error());
  return rc;
}

int cpdl_loader_next(cpdl_loader_t *L, cpdl_batch_t *out) {
  if (!L || !out)
    return cpdl__error(CPDL_EARG, "cpdl_loader_next: NULL argument");
  int rc = cpdl__loader_check_owner(L, "cpdl_loader_next");
  if (rc)
    return rc;
  if (L->failed)
    return cpdl__error(CPDL_EPEER, "the loader failed earlier (a rank died); close it");
  if (L->holding)
    return cpdl__error(CPDL_ESTATE, "cpdl_loader_next: step %llu is still held; call "
                       "cpdl_batch_release() first", (unsigned long long)(L->next_step));
  if (L->next_step == L->end_step)
    return cpdl__error(CPDL_EEOF, "all %llu steps delivered", (unsigned long long)L->end_step);
  /* A verdict another rank posted (a death, a departure, a stall it gave up
   * on) ends the job for this rank too, even if steps are still published. */
  rc = cpdl__ring_posted_error(L->cring);
  if (rc) {
    L->failed = rc == CPDL_EPEER;
    return rc;
  }
  rc = ensure_started(L);
  if (rc)
    return rc;
  rc = cpdl__fault("waiting", L->mesh.me.world_rank);
  if (rc == CPDL_EEOF) /* an injected early end (:eof): this rank alone stops, as a test wants */
    return rc;
  if (rc) {
    /* A local failure here breaks the group's ring: post it, or the leader
     * waits forever for this rank's cursor and the others for their steps. */
    char msg[512];
    snprintf(msg, sizeof msg, "rank %d: %s", L->mesh.me.world_rank, cpdl_last_error());
    cpdl__ring_post_error(L->cring, rc, msg);
    return rc;
  }
  /* A verdict from another host counts even when the step is ready (the
   * ring's wait returns a ready step without looking at anyone). */
  rc = cpdl__live_check(L->live, L->next_step);
  if (!rc)
    rc = cpdl__ring_wait_step(L->cring, L->next_step, L->cfg.timeout_ms, consumer_alive, L);
  L->timed_out[0] = '\0';
  if (rc == CPDL_ETIMEDOUT) /* retrying may still succeed; closing now posts it */
    snprintf(L->timed_out, sizeof L->timed_out, "rank %d gave up after a timeout: %s",
             L->mesh.me.world_rank, cpdl_last_error());
  if (rc) {
    if (rc == CPDL_EPEER) {
      /* Tell the group what this rank saw (first poster wins), so every
       * survivor names the same dead rank even after this one exits. */
      char msg[1024];
      snprintf(msg, sizeof msg, "%s", cpdl_last_error());
      cpdl__ring_post_error(L->cring, rc, msg);
      cpdl__live_announce_failure(L->live, msg); /* the other hosts' ranks */
      cpdl__error(rc, "%s", msg);
      L->failed = true;
    }
    return rc;
  }
  uint64_t step = L->next_step;
  uint32_t slot = cpdl__ring_slot_of(L->cring, step);
  const cpdl_prep_field_t *fields = cpdl__ring_fields(L->cring);
  const char *block = cpdl__ring_rank_block(L->cring, (uint32_t)L->mesh.local_cp_index, slot);
  const char *shared = cpdl__ring_shared_block(L->cring, slot);
  /* The step's lengths, as the publisher stored them (segment.h, the slot
   * lengths table): this region's for rank fields, the shared block's for
   * shared ones. Each is bounded by its field's capacity (ring.c refuses a
   * larger one), so a view can be shorter than its field, never longer. */
  int64_t rank_rows[CPDL_MAX_FIELDS], shared_rows[CPDL_MAX_FIELDS];
  const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(L->cring);
  rc = cpdl__ring_slot_lengths(L->cring, step, (uint32_t)L->mesh.local_cp_index, rank_rows);
  if (!rc)
    rc = cpdl__ring_slot_lengths(L->cring, step, geo->n_regions, shared_rows);
  if (rc) {
    char msg[1024];
    snprintf(msg, sizeof msg, "rank %d: %s", L->mesh.me.world_rank, cpdl_last_error());
    cpdl__ring_post_error(L->cring, rc, msg);
    return cpdl__error(rc, "%s", msg);
  }
  memset(out, 0, sizeof *out);
  out->step = step;
  out->n_fields = L->n_fields;
  for (int i = 0; i < L->n_fields; i++) {
    cpdl_view_field_t *v = &out->fields[i];
    *v = L->view[i];
    v->data = (fields[i].shared ? shared : block) + fields[i].offset;
    int64_t rows = fields[i].shared ? shared_rows[i] : rank_rows[i];
    if (rows < v->shape[0]) { /* shape[0] > 0 here: rows >= 0 */
      v->nbytes = v->nbytes / (size_t)v->shape[0] * (size_t)rows;
      v->shape[0] = rows;
    }
  }
  out->mesh = L->mesh.me;
  out->region = cpdl__ring_region(L->cring, (uint32_t)L->mesh.local_cp_index, &out->region_bytes);
  out->internal = L;
  (void)cpdl__ring_slot_state(L->cring, step, L->state_words);
  L->holding = true;
  (void)cpdl__fault("holding_slot", L->mesh.me.world_rank);
  /* A retry after CPDL_ETIMEDOUT that succeeds leaves no stale message. */
  cpdl__error_clear();
  return 0;
}

int cpdl_batch_release(cpdl_loader_t *L, cpdl_batch_t *batch) {
  if (!L || !batch)
    return cpdl__error(CPDL_EARG, "cpdl_batch_release: NULL argument");
  int rc = cpdl__loader_check_owner(L, "cpdl_batch_release");
  if (rc)
    return rc;
  if (!L->holding || batch->internal != L || batch->step != L->next_step)
    return cpdl__error(CPDL_ESTATE, "cpdl_batch_release: this batch (step %llu) is not the one "
                       "held by this loader", (unsigned long long)batch->step);
  cpdl__ring_release(L->cring, (uint32_t)L->mesh.me.group_rank, batch->step);
  L->holding = false;
  L->next_step++;
  batch->internal = NULL;
  for (int i = 0; i < batch->n_fields; i++)
    batch->fields[i].data = NULL;
  return 0;
}

int cpdl_loader_mesh(const cpdl_loader_t *L, cpdl_mesh_coords_t *out) {
  if (!L || !out)
    return cpdl__error(CPDL_EARG, "cpdl_loader_mesh: NULL argument");
  *out = L->mesh.me;
  return 0;
}

size_t cpdl_loader_segment_bytes(const cpdl_loader_t *L) {
  if (!L) { /* a size is never an error code: 0 and a message (cpdl.h "Conventions") */
    (void)cpdl__error(CPDL_EARG, "cpdl_loader_segment_bytes: the loader is NULL");
    return 0;
  }
  return L->total_bytes;
}

const cpdl__pin_t *cpdl__loader_pin(const cpdl_loader_t *L) { return L->pin; }

void cpdl__loader_memory(const cpdl_loader_t *L, cpdl_tools_memory_t *out) {
  size_t size = out->struct_size;
  *out = L->memory;
  out->struct_size = size;
}

int cpdl__loader_wait_ready(cpdl_loader_t *L) {
  int rc = cpdl__loader_check_owner(L, "cpdl_loader_next");
  if (rc)
    return rc;
  if (L->holding || L->failed || L->next_step == L->end_step)
    return 0; /* next() reports these */
  rc = ensure_started(L);
  if (rc)
    return rc;
  return cpdl__ring_wait_step(L->cring, L->next_step, L->cfg.timeout_ms, consumer_alive, L);
}

int cpdl__loader_dump_collated(cpdl_loader_t *L, const char *dir) {
  if (L->started)
    return cpdl__error(CPDL_ESTATE, "--dump-collated must be set before the first step");
  free(L->dump_collated);
  L->dump_collated = dir ? strdup(dir) : NULL;
  return dir && !L->dump_collated ? cpdl__error(-ENOMEM, "out of memory") : 0;
}
const cpdl__team_t *cpdl__loader_world(const cpdl_loader_t *L) { return &L->mesh.world; }

int cpdl__loader_agree_min(cpdl_loader_t *L, int64_t *values, int n, const char *what) {
  const cpdl__watch_t *previous = cpdl__watch_install(&L->watch);
  int rc = cpdl__coll_min_i64(&L->mesh.world, values, n, what);
  cpdl__watch_install(previous);
  return rc;
}

void cpdl__loader_data_shape(const cpdl_loader_t *L, int64_t *batch, int64_t *seq_len) {
  if (L->data_batch) {
    *batch = L->data_batch;
    *seq_len = L->data_seq_len;
  }
}

/* ------------------------------------------------------------------------- */
/* Close                                                                      */
/* ------------------------------------------------------------------------- */

/* While close's barrier waits: a death or departure posted to the group
 * means some member stopped in next() and will never reach this barrier. */
static int close_check(void *arg) {
  cpdl_loader_t *L = arg;
  int posted = L->cring ? cpdl__ring_posted_error(L->cring) : 0;
  /* A timeout given up on (posted by close) is a verdict on a rank too:
   * like a death, its poster closes locally, so nobody waits in a collective. */
  if (posted == CPDL_ETIMEDOUT)
    return cpdl__error(CPDL_EPEER, "%s", cpdl_last_error());
  return posted == CPDL_EPEER ? posted : 0;
}

int cpdl_loader_close(cpdl_loader_t *L) {
  if (!L)
    return 0;
  if (L->owner_pid != getpid()) {
    /* A forked child's copy: local only, the parent's job is untouched. *L
     * is not freed (the parent's loader owns its members; freeing a few of
     * them here would be a partial teardown of a copy nobody else uses). */
    forked_close(L);
    return 0;
  }
  /* Tell the group first (R19): if this close is out of turn (an exception,
   * an early exit) the others are still in next(); the first of them to
   * wait for a step that needs this rank's slot fails naming this rank and
   * posts it, which ends the barrier below. A collective close waits for no
   * such step, so nothing is posted and the barrier completes. */
  if (L->cring && L->timed_out[0]) /* giving up on a stalled rank: say so first */
    cpdl__ring_post_error(L->cring, CPDL_ETIMEDOUT, L->timed_out);
  if (L->cring)
    cpdl__ring_leave(L->cring, (uint32_t)L->mesh.me.group_rank);
  /* And the ranks of other hosts: a wait for a step this rank will not
   * take fails there; a normal close (all at the same step) waits for none. */
  cpdl__live_announce_leave(L->live, L->holding ? L->next_step + 1 : L->next_step);
  /* A verdict posted to the group (a death, a stall given up on): whoever
   * posted it closes without collectives, so nobody may wait in one. */
  if (close_check(L))
    L->failed = true;
  if (L->failed) {
    /* A rank is dead: a collective would hang. Clean up locally. */
    loader_free(L);
    return cpdl__error(CPDL_EPEER, "loader closed without collectives after a rank died");
  }
  L->watch.check = close_check;
  L->watch.check_arg = L;
  const cpdl__watch_t *previous = cpdl__watch_install(&L->watch);
  cpdl__op_t previous_op = cpdl__coll_op(CPDL__OP_CLOSE);
  int local = cpdl__fault("closing", L->mesh.me.world_rank);
  /* Everyone stops using its views before the leader stops producing. */
  int rc = cpdl__coll_barrier(&L->mesh.group, "close (the group's barrier)");
  L->watch.check = NULL;
  if (rc != CPDL_EPEER && close_check(L)) /* posted before its poster entered the barrier */
    rc = CPDL_EPEER;
  if (rc != CPDL_EPEER) {
    if (rc && !local)
      local = rc;
    loader_release(L); /* the mesh stays for the agreement */
    rc = cpdl__agree(&L->mesh.world, local);
  }
  cpdl__coll_op(previous_op);
  cpdl__watch_install(previous);
  loader_free(L); /* after an EPEER: local only, like a failed open */
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Host entry point                                                           */
/* ------------------------------------------------------------------------- */

static const cpdl_host_api_t host_api = {
    .abi_version = CPDL_HOST_ABI_VERSION,
    .struct_size = sizeof(cpdl_host_api_t),
    .version = CPDL_VERSION_STRING,
    .config_init = cpdl_config_init,
    .config_parse = cpdl_config_parse,
    .loader_open = cpdl_loader_open,
    .loader_next = cpdl_loader_next,
    .batch_release = cpdl_batch_release,
    .loader_close = cpdl_loader_close,
    .strerror = cpdl_strerror,
    .last_error = cpdl_last_error,
};

const cpdl_host_api_t *cpdl_host_entry_v1(void) { return &host_api; }
