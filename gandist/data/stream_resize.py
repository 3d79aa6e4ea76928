"""Continue the shard streams of one layout (ranks x workers) with another, with no gap and no overlap.

A stream of the old layout stopped part-way through its chunk (stream.py: chunk c = epoch c in the non-resampled
mode). The new streams first *finish* what the old ones left: a list of *tasks*, each one old stream's chunk read
exactly as that stream read it (same shards, same seeded shuffle buffer and flips), of which the task keeps the
shuffled samples at indices start, start + step, start + 2*step, ... Then they go on with the next chunk as usual.

    task = {"total": S0, "workers": W0, "stream": g, "chunk": c, "start": a, "step": d}

(S0 = streams of the old layout, W0 = its streams per rank: old stream g is stream g % W0 of rank g // W0.)

Old stream g at (chunk c, emitted e) leaves the task (c, start e, step 1), plus whole chunks c+1 .. C when another
old stream had already started chunk C (streams of unequal shard counts drift apart by up to a chunk); a stream that
was itself finishing tasks leaves the rest of them first. Who takes what, for S0 old and S new streams:

- S <= S0: new stream j takes the tasks of the old streams g with g % S == j, in order of g;
- S > S0: the tasks of old stream g are split among the k new streams j with j % S0 == g, the i-th of them keeping
  every k-th remaining sample from the i-th (start + i*step, step*k).

A task is plain data that composes (a task of a task is a task), so a resume or another resize in the middle of the
remainder continues it exactly. The cost: each task re-reads its chunk's raw bytes (no decoding) up to its start.
"""
from __future__ import annotations


def task_of(g: int, total: int, workers: int, chunk: int, start: int = 0, step: int = 1) -> dict:
    """The task that reads old stream g's chunk from shuffled index `start`, keeping every `step`-th sample."""
    return {"total": total, "workers": workers, "stream": g, "chunk": chunk, "start": start, "step": step}


def with_every_rank(states: list[dict]) -> dict:
    """Rank 0's loader state plus every rank's stream positions in global-stream order (what a resize needs); the
    checkpointer hands it every rank's state (StreamBatches.merge_rank_states)."""
    ordered = sorted(states, key=lambda s: s["rank"])
    return {**ordered[0], "global_positions": [dict(p) for s in ordered for p in s["positions"]]}


def left_over(old: list[dict], workers: int) -> tuple[list[list[dict]], int]:
    """(tasks each old stream leaves, the chunk the new layout starts at once they are done)."""
    total = len(old)
    normal = [(p["chunk"], 0 if p.get("remainder") else p["emitted"]) for p in old]
    last_started = max(c if e > 0 else c - 1 for c, e in normal)
    leftovers = []
    for g, (p, (chunk, emitted)) in enumerate(zip(old, normal)):
        tasks = [dict(t) for t in p.get("remainder", [])]
        if tasks:  # the task it was in, less the samples it emitted of it
            tasks[0]["start"] += p["emitted"] * tasks[0]["step"]
        tasks += [task_of(g, total, workers, c, emitted if c == chunk else 0) for c in range(chunk, last_started + 1)]
        leftovers.append(tasks)
    return leftovers, last_started + 1


def resized_positions(old: list[dict], old_workers: int, world_size: int, workers: int, rank: int) -> list[dict]:
    """The positions of `rank`'s `workers` streams in a layout of world_size x workers streams that continue the
    old layout's streams (positions `old`, global-stream order; old_workers streams per rank)."""
    old_total, total = len(old), world_size * workers
    leftovers, chunk = left_over(old, old_workers)
    positions = []
    for j in range(rank * workers, (rank + 1) * workers):
        if total <= old_total:
            taken = [g for g in range(old_total) if g % total == j]
            tasks = [t for g in taken for t in leftovers[g]]
            skipped, seen = sum(old[g]["skipped"] for g in taken), sum(old[g]["seen"] for g in taken)
        else:
            g = j % old_total
            sharers = [i for i in range(total) if i % old_total == g]
            k, i = len(sharers), sharers.index(j)
            tasks = [{**t, "start": t["start"] + i * t["step"], "step": t["step"] * k} for t in leftovers[g]]
            # the old stream's counts go to one of its sharers, so that the sum over streams carries over
            skipped, seen = (old[g]["skipped"], old[g]["seen"]) if i == 0 else (0, 0)
        position = {"chunk": chunk, "emitted": 0, "skipped": skipped, "seen": seen}
        if tasks:
            position["remainder"] = tasks
        positions.append(position)
    return positions
