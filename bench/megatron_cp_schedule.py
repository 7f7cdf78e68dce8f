"""megatron_cp_schedule — Megatron-core's BalancedCPScheduler, restated, on bench_schedule's batches.

An independent statement (written from reading it, not copied) of the scheduler in
megatron/core/pipeline_parallel/hybrid_cp_schedule.py of NVIDIA/Megatron-LM at commit
00caa53af30912914981c86f39db123961678bbd (its driver: megatron/core/datasets/data_schedule.py,
commit 00c51e13247685110aec81e60aa3db91cbdbff7d). What it does, in our words:

* Sub-samples are sorted longest first. Each gets cp = the power of 2 at or above
  L / max_seq_len_per_rank (at least 1): its "GPUs needed".
* The global batch is cut into micro-batches ("groups"), each a separate round with a
  barrier after it. To form one: the sorted list is split into as many buckets as there
  are distinct cp sizes, each closed when its work passes 1.1 x total/k (or when the
  samples left are needed for the buckets left). Then repeatedly: the first bucket whose
  head can be placed — an existing CP group of exactly its size, or enough ranks not yet
  in any group — gives its head to the existing group of that size whose busiest member
  is least loaded, unless a new group made of the least-loaded free ranks would start
  lower. Once the CP size has dropped below the first one, the round ends as soon as
  max - min <= 5% of max over the ranks. The rest waits for the next round.
* Trim: while the slack exceeds 5% and no rank is idle, the last sample of the busiest
  rank's group is returned to the waiting list if that lowers the slack.
* Fill: while some rank has nothing, the first group of the smallest size doubles (up to
  all ranks), taking idle ranks; its samples are then spread over the larger group.
* Work of a sample: L^2 / cp ("get_total_workload"; it has no linear term).

The round's time is its busiest rank's work; the step's is the sum over rounds. We report
step / (total work / ranks), the same max/mean that bench_schedule reports for one round,
both with Megatron's own estimate driving the decisions ("L^2") and with cpdl's model
a*L + b*L^2 driving them ("a,b"); work is always evaluated with cpdl's model.

usage: bench_schedule ... --batches FILE; python3 bench/megatron_cp_schedule.py FILE [--cap N]
--cap: max_seq_len_per_rank (default: the rank's block, batch * seq_len / cp: the same memory
as cpdl's schedules; smaller caps make Megatron spread long samples over more ranks).
"""
import math
import sys
import time

DELTA = 0.05    # the balance slack of next_hdp_group
BUCKET_SLACK = 1.1


def gpus_needed(length, cap):
    return max(1, 2 ** math.ceil(math.log2(length / cap)))


def make_buckets(items, cap, estimate):
    k = len({gpus_needed(length, cap) for _, length in items})
    target = sum(estimate(length, gpus_needed(length, cap)) for _, length in items) / k
    buckets, cur, cur_work, remaining_k = [], [], 0.0, k
    for i, (sid, length) in enumerate(items):
        work = estimate(length, gpus_needed(length, cap))
        if cur and (cur_work + work > BUCKET_SLACK * target or len(items) - i <= remaining_k - len(buckets)):
            buckets.append(cur)
            cur, cur_work = [], 0.0
            remaining_k -= 1
        cur.append((sid, length))
        cur_work += work
    if cur:
        buckets.append(cur)
    return buckets


def one_round(items, ranks, cap, estimate):
    """One micro-batch: (per-rank sample lists, samples left for later rounds)."""
    buckets = make_buckets(items, cap, estimate)
    held = [[] for _ in range(ranks)]      # sample ids per rank
    load = [0.0] * ranks
    group_of = [None] * ranks
    groups = []                              # [members], creation order
    first_need, checking = None, False
    lengths = dict(items)
    while any(buckets):
        pick = None
        for b, bucket in enumerate(buckets):
            if not bucket:
                continue
            need = gpus_needed(bucket[0][1], cap)
            free = sum(g is None for g in group_of)
            if any(len(m) == need for m in groups) or free >= need:
                pick = b
                break
        if pick is None:
            break
        sid, length = buckets[pick][0]
        need = gpus_needed(length, cap)
        if first_need is None:
            first_need = need
        best, best_load = None, math.inf
        for g, members in enumerate(groups):
            if len(members) == need:
                busiest = max(load[r] for r in members)
                if busiest < best_load:
                    best, best_load = g, busiest
        free = sorted((r for r in range(ranks) if group_of[r] is None), key=lambda r: load[r])
        if len(free) >= need and load[free[need - 1]] < best_load:
            members = free[:need]
            groups.append(members)
            for r in members:
                group_of[r] = len(groups) - 1
        else:
            members = groups[best]
        for r in members:
            held[r].append(sid)
            load[r] += estimate(length, need)
        buckets[pick].pop(0)
        while buckets and not buckets[0]:
            buckets.pop(0)
        if need < first_need:
            checking = True
        if checking and any(buckets) and max(load) - min(load) <= DELTA * max(load):
            break
    left = [item for bucket in buckets for item in bucket]
    # trim
    while True:
        top, low = max(load), min(load)
        if top - low <= DELTA * top or low == 0:
            break
        r = load.index(top)
        members = groups[group_of[r]]
        if len(held[r]) <= 1:
            break
        sid = held[r][-1]
        cost = estimate(lengths[sid], len(members))
        after = load[:]
        for m in members:
            after[m] -= cost
        if max(after) - min(after) < top - low:
            for m in members:
                held[m].pop()
                load[m] -= cost
            left.append((sid, lengths[sid]))
        else:
            break
    # fill idle ranks by doubling the smallest group
    while any(not h for h in held):
        smallest = min(len(m) for m in groups)
        grow_to = min(2 * smallest, ranks)
        g = next(i for i, m in enumerate(groups) if len(m) == smallest)
        idle = [r for r in range(ranks) if not held[r]][: grow_to - smallest]
        if not idle:
            break
        for r in idle:
            held[r] = list(held[groups[g][0]])
            group_of[r] = g
        groups[g] = groups[g] + idle
    return held, left


def schedule(lengths, ranks, cap, estimate):
    need = gpus_needed(max(lengths), cap)
    if need > ranks:
        sys.exit(f"megatron_cp_schedule: a sample of {max(lengths)} needs {need} GPUs at "
                 f"max_seq_len_per_rank {cap}, more than the {ranks} ranks (Megatron refuses it too); "
                 f"raise --cap")
    items = sorted(enumerate(lengths), key=lambda t: -t[1])   # stable: ties keep the order
    rounds = []
    while items:
        held, items = one_round(items, ranks, cap, estimate)
        rounds.append(held)
    return rounds


def step_ratio(lengths, rounds, ranks, a, b):
    """sum over rounds of the busiest rank's work, over the mean rank work."""
    total = sum(a * n + b * n * n for n in lengths)
    step = 0.0
    for held in rounds:
        share = {}
        for h in held:
            for sid in h:
                share[sid] = share.get(sid, 0) + 1
        step += max(sum((a * lengths[s] + b * lengths[s] ** 2) / share[s] for s in h) for h in held)
    return step / (total / ranks), len(rounds)


def main():
    args = sys.argv[1:]
    cap_override = None
    if len(args) == 3 and args[1] == "--cap":
        cap_override = int(args[2])
        args = args[:1]
    if len(args) != 1:
        sys.exit(__doc__)
    sys.argv[1] = args[0]
    batches = []
    with open(sys.argv[1]) as f:
        for line in f:
            v = line.split()
            dp, cp, batch, seq_len = (int(x) for x in v[:4])
            a, b = float(v[4]), float(v[5])
            batches.append((dp, cp, batch, seq_len, a, b, [int(x) for x in v[6:]]))
    if not batches:
        sys.exit("megatron_cp_schedule: no batches in " + sys.argv[1])
    dp, cp, batch, seq_len, a, b, _ = batches[0]
    ranks, cap = dp * cp, cap_override or batch * seq_len // cp
    print(f"megatron BalancedCPScheduler (restated): {len(batches)} batches, {ranks} ranks, "
          f"max_seq_len_per_rank {cap}")
    print(f"{'estimate':<9} {'mean':>8} {'p50':>8} {'p90':>8} {'worst':>8} {'sum(max)/mean':>14} "
          f"{'rounds':>7} {'python p50us':>13}")
    for name, estimate in (("L^2", lambda n, c: n * n / c), ("a,b", lambda n, c: (a * n + b * n * n) / c)):
        ratios, steps, means, n_rounds, times = [], 0.0, 0.0, 0, []
        for _, _, _, _, a_, b_, lengths in batches:
            t0 = time.perf_counter()
            rounds = schedule(lengths, ranks, cap, estimate)
            times.append((time.perf_counter() - t0) * 1e6)
            ratio, count = step_ratio(lengths, rounds, ranks, a_, b_)
            mean = sum(a_ * n + b_ * n * n for n in lengths) / ranks
            ratios.append(ratio)
            steps += ratio * mean
            means += mean
            n_rounds += count
        ratios.sort()
        times.sort()
        q = lambda v, x: v[int(x * (len(v) - 1) + 0.5)]
        print(f"{name:<9} {sum(ratios) / len(ratios):8.3f} {q(ratios, 0.5):8.3f} {q(ratios, 0.9):8.3f} "
              f"{ratios[-1]:8.3f} {steps / means:14.3f} {n_rounds / len(batches):7.2f} {q(times, 0.5):13.0f}")


if __name__ == "__main__":
    main()
