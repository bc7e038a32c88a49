"""The evaluate-durian flow's scheduling of chunks over Ray's `ActorPool`: a worker that dies on a chunk (again
after its restart) fails that chunk's clips with a readable reason, and the other chunks complete."""

from __future__ import annotations

import ray

from data_specs.spec import RayConfig
from flows.evaluate import WORKER_OPTIONS, evaluate_chunks
from flows.ray_runtime import ray_session
from tests.evaluation.dying_worker import DyingOnOneClip
from training.data import PairEntry
from training.evaluation.plan import EvalItem


def _items(count: int) -> list[EvalItem]:
    entries = [PairEntry(key=f"vid{i:02d}_c00000_p0", shard=f"shard-{i:06d}.tar", video_id=f"vid{i:02d}",
                         clip_id=f"vid{i:02d}_c00000", stage=2, attribute="hair", targets=2) for i in range(count)]
    return [EvalItem(entry, entry, "self") for entry in entries]


def test_a_chunk_whose_worker_dies_fails_with_its_reason_and_the_others_complete():
    items = _items(4)
    shares: list[float] = []
    with ray_session(RayConfig(local_ray_cpus=2)):
        worker = ray.remote(DyingOnOneClip).options(num_cpus=1, **WORKER_OPTIONS)
        # Two workers, one clip per chunk: the worker holding vid01 dies twice; the other evaluates the rest.
        results = evaluate_chunks([worker.remote(items[1].target.key) for _ in range(2)],
                                  [[item] for item in items], shares.append)
        # One worker, which dies on the second of three chunks: the third is never started.
        alone = evaluate_chunks([worker.remote(items[1].target.key)], [items[:1], items[1:2], items[2:]],
                                lambda share: None)
    rows = [r.row for r in results]
    assert [r.sample_key for r in rows] == [i.target.key for i in items]  # in the plan's order
    assert [r.status for r in rows] == ["ok", "failed", "ok", "ok"]
    assert rows[1].reason.startswith("evaluation worker failed: ActorDiedError: ") and rows[1].frames == 0
    assert shares == [0.25, 0.5, 0.75, 1.0]  # the progress moves once per chunk, failed ones included

    rows = [r.row for r in alone]
    assert [(r.sample_key, r.status) for r in rows] == [(i.target.key, s) for i, s in
                                                         zip(items, ["ok", "failed", "failed", "failed"])]
    assert rows[1].reason.startswith("evaluation worker failed: ActorDiedError: ")
    assert all(r.reason.startswith("no evaluation worker left to run it (every worker failed: ActorDiedError")
               for r in rows[2:])
