"""Offline evaluation of a saved `DurianPipeline` on a dataset's evaluation split (the paper's protocol, section 4;
the contracts, `EvalConfig`, the per-clip `EvalClipRow` and `ClipResult`, are in `data_specs.evaluation`).

    plan = plan_evaluation(config)                  # plan.py: every refusal happens here, before any work
    results = Evaluator(config, plan.index).evaluate(plan.items[i:j])   # evaluator.py: per worker, per chunk
    report = summarise(config, plan, results)       # report.py: per-attribute table, FID, FVD
    write_report(config, report)                    # report.py: Parquet, Markdown, the worst/best video grid

| module | what |
|---|---|
| `plan.py` | `plan_evaluation`, `EvalItem`, `EvalPlan`, `EvaluationError`, triplet-backed cross items |
| `evaluator.py` | `Evaluator` (pipeline and extractors, loaded once; a Ray actor holds one), `failed` |
| `report.py` | `summarise`, `summary_markdown`, `write_report`, `worst_and_best_grid` |
| `extractors.py` | the frozen networks measured with (Inception, video ResNet, LPIPS, CLIP, DINOv2, ArcFace) |
| `metrics.py` | LPIPS, region L1/PSNR, the Fréchet distance (FID, FVD-style), cosine similarity |

The direction of imports: evaluation builds on training (`training.data` reads the split,
`training.reconstruction` generates a clip as the validation pass does, `training.metrics` scores its pixels),
and training never imports evaluation: the validation pass needs only those three, which stay in `training/`,
and no extractor weights. The flow `flows/evaluate.py` runs the evaluators on Ray actors. Import from the module
that defines a name: a Ray worker unpickling an `EvalItem` then imports the plan alone.
"""
