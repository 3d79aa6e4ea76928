"""Stream WebDataset tar shards over fsspec (local, s3://, memory://, ...) to every rank, resumably.

shard_reader.py reads the tar streams (through the webdataset library) and decodes samples; this module decides the
order, so that a position can be saved and restored exactly:

- Each rank runs W = max(1, data.workers) *streams* (one per DataLoader worker). A stream reads *chunks*: in the
  non-resampled mode chunk c is epoch c (all shards in a seeded permutation, stream s of S taking shards s::S); in
  the resampled mode chunk c is a seeded draw with replacement of about len(shards)/S shards.
- Within a chunk, samples pass a shuffle buffer seeded by (seed, rank, stream, chunk) that is flushed at the chunk's
  end. A stream's position is (chunk, samples emitted in it), so a resume reads at most one chunk's raw bytes again
  (without decoding) to stand exactly where it stopped.
- Resumed with another layout (ranks x workers), the streams first finish the chunks the old streams left, read as
  those streams read them, then go on at the next chunk (stream_resize.py): the position's "remainder" lists those
  tasks, "emitted" then counts in the first of them.
- Workers batch their own samples; the DataLoader takes batches round-robin from the workers, so batch k comes
  from stream (k0 + k) % W and the iterator knows each stream's position after every batch it hands out.

The reader counts the samples it skips (faults: shard_reader.py); more than data.max_skip_fraction stop the run here.
"""
from __future__ import annotations

import logging
import posixpath
import random
from typing import Iterator

import torch

from gandist.data.base import BatchIterator, DataInfo, DataSource, micro_batch_size
from gandist.data.shard_reader import Decoder, ShardReader, expand_urls
from gandist.data.shards import read_manifest
from gandist.data.stream_resize import resized_positions, task_of, with_every_rank
from gandist.errors import DataStreamError, UserError

log = logging.getLogger("gandist.data")

MIN_SEEN_FOR_SKIP_CHECK = 100  # one early bad sample must not stop a run whose skip budget is 1%


class StreamDataset(torch.utils.data.IterableDataset):
    """The batches of W streams of one rank; DataLoader worker i plays stream (i + rotation) % W."""

    def __init__(self, cfg, urls, expected, rank, world_size, streams, batch, seed, starts, rotation):
        super().__init__()
        self.cfg, self.urls, self.expected = cfg, urls, expected
        self.rank, self.world_size, self.streams, self.batch, self.seed = rank, world_size, streams, batch, seed
        self.starts, self.rotation = starts, rotation  # per-stream {"chunk", "emitted", "skipped", "seen"}

    def chunk_shards(self, stream: int, piece: dict) -> tuple[list[str], int, int]:
        """(shards, sample modulus, sample offset) of a piece (stream_resize.py): shards split by stream, or samples
        when too few. A piece is this stream's chunk or a task left by a stream of another layout."""
        total, chunk, global_stream = piece["total"], piece["chunk"], piece["stream"]
        if self.cfg.resampled:
            rng = random.Random(f"{self.seed}/resampled/{self.rank}/{stream}/{chunk}")
            return [rng.choice(self.urls) for _ in range(max(1, len(self.urls) // total))], 1, 0
        order = list(self.urls)
        if self.cfg.shuffle_buffer:
            random.Random(f"{self.seed}/epoch/{chunk}").shuffle(order)
        if len(order) >= total:
            return order[global_stream::total], 1, 0
        return order, total, global_stream  # every stream reads all shards and keeps every total-th sample

    def stream_samples(self, stream: int) -> Iterator[dict]:
        """Endless batches of one stream, each tagged with the stream's position after it: first the tasks left by
        another layout (position["remainder"]), then chunk after chunk."""
        start = self.starts[stream]
        reader = ShardReader(self.cfg.storage_options, self.cfg.retries, self.cfg.retry_backoff, self.expected)
        reader.skipped, reader.seen = start["skipped"], start["seen"]
        decode = Decoder(self.cfg)
        tasks = [dict(t) for t in start.get("remainder", [])]
        chunk, done = start["chunk"], start["emitted"]  # done: samples of the first piece emitted before
        xs, ys, decode_skipped, empty_chunks = [], [], 0, 0
        while True:
            piece = tasks[0] if tasks else task_of(self.rank * self.streams + stream, self.world_size * self.streams,
                                                   self.streams, chunk)
            shards, modulus, offset = self.chunk_shards(stream, piece)
            rank, old_stream = divmod(piece["stream"], piece["workers"])
            rng = random.Random(f"{self.seed}/shuffle/{rank}/{old_stream}/{piece['chunk']}")
            counted = (reader.skipped + decode_skipped, reader.seen)  # the counts as of this piece's position
            first, step = piece["start"] + done * piece["step"], piece["step"]
            index, emitted = -1, done
            for sample, head in self._shuffled(reader, shards, modulus, offset, rng):
                index += 1
                flip = self.cfg.hflip and rng.random() < 0.5
                if index < first:  # replaying to the position: no decoding
                    if index == first - 1:  # the reader now stands where it stood when the position was saved
                        (reader.skipped, reader.seen), decode_skipped = counted, 0
                    continue
                if (index - piece["start"]) % step:  # another stream's share of a task
                    continue
                emitted += 1
                item = decode(sample, head)
                if item is None:
                    decode_skipped += 1
                    continue
                xs.append(item[0].flip(-1) if flip else item[0])
                ys.append(item[1])
                if len(xs) == self.batch:
                    state = {"chunk": chunk, "emitted": emitted, "skipped": reader.skipped + decode_skipped,
                             "seen": reader.seen}
                    if tasks:
                        state["remainder"] = [dict(t) for t in tasks]
                    yield {"x": torch.stack(xs), "y": torch.tensor(ys), "stream": stream, "state": state}
                    xs, ys = [], []
            if index < first - 1:  # the piece held nothing more: its samples were counted where it was left
                (reader.skipped, reader.seen), decode_skipped = counted, 0
            if tasks:
                tasks.pop(0)
            else:
                empty_chunks = empty_chunks + 1 if index < 0 else 0
                if empty_chunks >= 3:  # nothing readable: no batch would ever reach the skip-budget check
                    raise DataStreamError(f"{self.cfg.urls}: three chunks in a row gave no samples (every shard "
                                          "read was missing or corrupt); check the shards and data.storage_options")
                chunk += 1
            done = 0

    def _shuffled(self, reader, shards, modulus, offset, rng) -> Iterator[tuple[dict, bool]]:
        """(raw sample, first of its shard) through a shuffle buffer that is flushed at the end."""
        size = self.cfg.shuffle_buffer
        buffer: list[tuple[dict, bool]] = []
        index = 0
        for url in shards:
            for position, sample in enumerate(reader.samples(url)):
                index += 1
                if (index - 1) % modulus != offset:
                    continue
                item = (sample, position == 0)
                if size <= 1:
                    yield item
                    continue
                if len(buffer) < size:
                    buffer.append(item)
                    continue
                pick = rng.randrange(size)
                buffer[pick], item = item, buffer[pick]
                yield item
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None:
            torch.set_num_threads(1)
        stream = (worker + self.rotation) % self.streams
        try:
            yield from self.stream_samples(stream)
        except DataStreamError as err:  # sent as data: a worker's exception would reach the user as a traceback
            yield {"error": str(err), "stream": stream}


class StreamBatches(BatchIterator):
    """This rank's batches from the shard streams, with positions, skip counts and the skip budget."""

    def __init__(self, source: "WebDatasetSource", rank: int, world_size: int, global_batch: int, seed: int):
        self.source, self.rank, self.world_size, self.seed = source, rank, world_size, seed
        self.batch = global_batch // world_size
        self.streams = max(1, source.cfg.workers)
        self.positions = [{"chunk": 0, "emitted": 0, "skipped": 0, "seen": 0} for _ in range(self.streams)]
        self.batches = 0
        self._iter = None
        self._loader = None

    @property
    def skipped_samples(self) -> int:  # type: ignore[override]
        """Samples skipped so far by this rank (all streams)."""
        return sum(p["skipped"] for p in self.positions)

    @property
    def seen_samples(self) -> int:
        """Samples read or lost so far by this rank (all streams)."""
        return sum(p["seen"] for p in self.positions)

    def _start(self) -> None:
        cfg = self.source.cfg
        dataset = StreamDataset(cfg, self.source.urls, self.source.expected, self.rank, self.world_size,
                                self.streams, self.batch, self.seed, [dict(p) for p in self.positions],
                                self.batches % self.streams)
        if cfg.workers == 0:
            self._iter = iter(dataset)
            return
        self._loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.workers,
                                                   prefetch_factor=cfg.prefetch, persistent_workers=False)
        self._iter = iter(self._loader)

    def __next__(self):
        if self._iter is None:
            self._start()
        item = next(self._iter)
        if "error" in item:
            self.close()
            raise DataStreamError(item["error"])
        self.positions[item["stream"]] = dict(item["state"])
        self.batches += 1
        self._check_skip_budget()
        y = item["y"] if self.source.info.num_classes else None
        return item["x"].float().div_(127.5).sub_(1.0), y

    def _check_skip_budget(self) -> None:
        skipped, seen = self.skipped_samples, self.seen_samples
        budget = self.source.cfg.max_skip_fraction
        if skipped > budget * max(seen, MIN_SEEN_FOR_SKIP_CHECK):
            self.close()
            raise DataStreamError(
                f"{self.source.cfg.urls}: {skipped} of {seen} samples skipped ({skipped / max(seen, 1):.1%}), more "
                f"than data.max_skip_fraction={budget}; repair the shards named in the warnings above or raise it")

    def state_dict(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "streams": self.streams, "batches": self.batches,
                "positions": [dict(p) for p in self.positions], "resampled": self.source.cfg.resampled}

    # a resume at another layout finishes every old stream, so it needs every rank's positions (stream_resize.py)
    merge_rank_states = staticmethod(with_every_rank)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        positions = [dict(p) for p in state.get("positions", [])]
        same = (state.get("world_size") == self.world_size and state.get("rank") == self.rank
                and state.get("streams") == self.streams and len(positions) == self.streams)
        if same:
            self.positions, self.batches = positions, int(state["batches"])
            return
        layout = f"{self.world_size} rank(s) x {self.streams} worker(s) instead of {state.get('world_size')} x " \
                 f"{state.get('streams')}"
        every = state.get("global_positions")
        if not self.source.cfg.resampled and every and len(every) == state["world_size"] * state["streams"]:
            self.positions = resized_positions(every, state["streams"], self.world_size, self.streams, self.rank)
            self.batches = 0
            if self.rank == 0:
                log.info("data: resuming with %s: the streams first finish the old streams' chunks (re-read raw up "
                         "to where each stopped), then go on at chunk %d", layout, self.positions[0]["chunk"])
            return
        # Resampled chunks are independent draws, and a state without every rank's positions (written before they
        # were gathered) cannot say what is left: start a fresh chunk rather than replay the first one.
        chunk = 1 + max((p["chunk"] for p in positions), default=-1)
        log.warning("data: resuming with %s: streams restart at chunk %d", layout, chunk)
        self.positions = [{"chunk": chunk, "emitted": 0, "skipped": 0, "seen": 0} for _ in range(self.streams)]
        self.batches = 0

    def close(self) -> None:
        loader_iter = self._iter
        self._iter, self._loader = None, None
        shutdown = getattr(loader_iter, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class WebDatasetSource(DataSource):
    """`data.kind: webdataset`: tar shards named by a brace pattern over any fsspec URL."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.urls = expand_urls(cfg.urls, cfg.storage_options)
        if not self.urls:
            raise UserError(f"data.urls: {cfg.urls!r} matches no shard URL; write shards with `gandist data shards`")
        self.expected = self._check_against_listing_and_manifest()
        self.info = DataInfo(shape=(cfg.channels, cfg.resolution, cfg.resolution), num_classes=cfg.num_classes)

    def _check_against_listing_and_manifest(self) -> dict[str, int]:
        """url -> manifest sample count; errors for a pattern matching nothing or disagreeing with the manifest."""
        import fsspec

        expected: dict[str, int] = {}
        present = 0
        by_dir: dict[str, list[str]] = {}
        for url in self.urls:
            by_dir.setdefault(url.rsplit("/", 1)[0] if "/" in url else ".", []).append(url)
        for directory, urls in by_dir.items():
            fs, root = fsspec.core.url_to_fs(directory, **self.cfg.storage_options)
            try:
                listed = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
            except FileNotFoundError:
                listed = set()
            names = [u.rsplit("/", 1)[-1] for u in urls]
            present += sum(n in listed for n in names)
            missing = [u for u, n in zip(urls, names) if n not in listed]
            if missing and len(missing) < len(urls):
                log.warning("data: %d shard(s) of %s are missing (e.g. %s); they will be skipped and counted",
                            len(missing), self.cfg.urls, missing[0])
            manifest = read_manifest(fs, root) if listed else None
            if manifest is None:
                continue
            counts = {s["name"]: int(s["samples"]) for s in manifest["shards"]}
            unknown = [u for u, n in zip(urls, names) if n not in counts]
            if unknown:
                raise UserError(f"{unknown[0]}: not in {directory}/manifest.json ({len(unknown)} such shard(s)); "
                                "the manifest disagrees with data.urls: fix the pattern or rewrite the shards")
            classes = manifest.get("classes") or []
            if self.cfg.num_classes and classes and len(classes) != self.cfg.num_classes:
                raise UserError(f"{directory}/manifest.json lists {len(classes)} classes but data.num_classes is "
                                f"{self.cfg.num_classes}; set data.num_classes: {len(classes)}")
            expected.update({u: counts[n] for u, n in zip(urls, names)})
        if present == 0:
            raise UserError(f"data.urls: {self.cfg.urls!r} matches no existing shard (first: {self.urls[0]}); "
                            "check the pattern and data.storage_options, or write shards with `gandist data shards`")
        return expected

    def loader(self, rank: int, world_size: int, global_batch: int, seed: int,
               micro_batches: int = 1) -> StreamBatches:
        """This rank's iterator (starts its DataLoader workers on the first batch). Shards differ per rank, so the
        micro-batch layout has nothing to keep invariant: `micro_batches` is only checked to divide the batch."""
        micro_batch_size(global_batch, world_size, micro_batches)
        return StreamBatches(self, rank, world_size, global_batch, seed)

    def real_samples(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n samples for evaluation, gathered in batches of at most 256 (workers never decode n-image batches)."""
        it = self.loader(0, 1, min(n, 256), seed)
        xs, ys = [], []
        try:
            while sum(len(x) for x in xs) < n:
                x, y = next(it)
                xs.append(x)
                ys.append(y)
        finally:
            it.close()
        y = torch.cat(ys)[:n] if self.info.num_classes else None
        return torch.cat(xs)[:n], y
