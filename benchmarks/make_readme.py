"""Write benchmarks/README.md from benchmarks/results/*.json (run by `make bench` after the scripts)."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {
    "dct_step": [("time_ratio", "<=", 1.05), ("mem_ratio", "<=", 1.10)],
    "token_scaling": [("speedup_2_over_1", ">=", 1.7), ("sim_makespan_over_ideal", "<=", 1.10)],
    "generation": [("ratio", ">=", 0.90)],
    "classifier_stage": [("ratio", "<=", 1.3)],
}

ABOUT = {
    "dct_step": "Seconds and peak resident memory per DCT update on the MiniWorld pipeline (batch 8, 10 DDIM "
                "steps, guidance 3, gradient through the last step and the VAE decoder): ours (`DCTLearner`, what "
                "the token actors run) against a bare single-process loop with the structure of the original "
                "DCT implementation (textual-inversion style: the whole embedding matrix trainable, other rows "
                "restored after each step). Each in its own process; median of the timed updates.",
    "token_scaling": "Classes per hour of the token stage with 1 and 2 actors, each held to one core "
                     "(`tokens.num_cpus=1`, one torch thread), actor start-up included; then 1,000 simulated "
                     "classes over 64 simulated actors on the real scheduling code (`digzsl_ray.distributed.pool.run_pool`), "
                     "each class sleeping for a duration drawn from the measured ones (scaled by `sim_time_scale`): "
                     "makespan over the ideal `max(sum/64, max)` and idle actor time per class.",
    "generation": "Images per second through the Ray Data generation stage (`map_batches(ImageGenerator, "
                  "ActorPoolStrategy(size=1))`, PNG encoding and CDM scoring included) against a bare "
                  "`StableDiffusionPipeline` loop in one process with the same batch size, steps and threads.",
    "serve": "Requests per second and p50/p99 latency of `POST /v1/classify` (multipart PNG) at 1, 8 and 32 "
             "concurrent clients on loopback, with dynamic batching (max batch 16, 5 ms wait) and without "
             "(max batch 1); `time_breakdown`: image decoding, the model per image at batch 1 and 16, and the "
             "rest of the single-client latency (HTTP proxy, routing, the ingress-to-model hop). Modes: `batched` "
             "and `unbatched` (ingress and model in two deployments, a handle hop per request), `in_ingress` "
             "(`serve.model_in_ingress: true`: the model batched inside the ingress replicas). `bare`: the "
             "baseline a user would pick instead, a single-process uvicorn + FastAPI app (`benchmarks/bare_app.py`) "
             "doing the same decode, the same model forward and the same batching (16 / 5 ms), measured first "
             "(before Ray starts) with the same clients; `*_over_bare_*`: our throughput and p99 over its.",
    "live": "Adding one class to a running service (`python benchmarks/live.py`): a copy of the run directory "
            "served on a local Ray cluster (4 logical CPUs on the 2 cores), classify latency from 2 clients at 5 "
            "requests/s each while idle and during the add-class job (`POST /v1/classes`), the job's wall time by "
            "stage and its gate figures, and, for a MiniWorld class the run never had, its top-1 on 60 fresh renders.",
    "pipeline": "Wall time per stage and peak resident memory of the whole process tree for `digzsl run --config "
                "miniworld` (what `make demo` runs), from a fresh run directory.",
    "ablation": "Every variant's ZSL top-1, GZSL U/S/H, calibration lambda and AUSUC over several seeds of the "
                "whole MiniWorld pipeline (`python benchmarks/ablation.py --seeds 0 1 2`): each seed sets `seed`, "
                "`tokens.seed`, `generate.seed` and `data.val_seed` (the world stays the same); mean, sample "
                "standard deviation and the values; `calibrations`: the same under each calibration "
                "(`synthetic`, `valclass`) with the unseen accuracy on the validation data lambda was chosen on "
                "and its gap to the real test images.",
    "classifier_stage": "The DIG-ZSL classifier stage with a frozen CLIP backbone (`python benchmarks/classifier_stage.py "
                        "--run DIR`): `train-classifier --variant dct` (features of 3 views cached in OUT/features, the "
                        "head trained in one Ray task on a running local cluster) with a cold cache (`ours_s`) and a "
                        "warm one (`ours_warm_cache_s`), against a bare single-process loop doing the same feature "
                        "extraction, epochs and test scoring (`bare_s`); `ratio` = ours / bare.",
    "beat_clip": "What DIG-ZSL's images add to the frozen CLIP, over the seeds' run directories (`python "
                 "benchmarks/beat_clip.py --runs DIR...`, no Ray, no upstream retraining): the floor "
                 "`clip_zero_shot`; the judges of the generated images (frozen CLIP, oracle, where the oracle's "
                 "errors go); classifier recipes on cached features (head, distillation toward the frozen CLIP, "
                 "the CLIP filter, the initial head as a candidate, failed tokens dropped, He et al.'s schedule; "
                 "diagnostics: an oracle filter as the upper bound, a per-class fallback to plain images) with test "
                 "ZSL/GZSL, the validation accuracy and the validation-class ZSL (seen classes held out as "
                 "pseudo-unseen with plain-prompt images, scored on their real images: what a choice may rest on).",
    "token_hypotheses": "The token-side settings side by side (`python benchmarks/token_hypotheses.py --base DIR "
                        "--exp NAME=DIR...`): per setting, dct's and the floor's ZSL top-1 and GZSL H over the seeds "
                        "(from `ablation*.json`) and the tokens' own fresh-seed figures from each kept run's "
                        "`tokens/summary.json` (CDM and oracle accuracy of the learned token's images, updates, gamma "
                        "stops).",
    "diagnose": "Per unseen class of one run (`python benchmarks/diagnose.py --run DIR`): the CDM's and the "
                "oracle's accuracy on fresh generated images (plain prompt, learned token), the classifiers' "
                "accuracy on held-out synthetic images and on real test images, and the CDM's on real test "
                "images: why a variant wins or loses.",
    "determinism": "Two runs of one seed (`python benchmarks/determinism.py --seed 0`, or `--compare A B` on two "
                   "existing run directories): per stage output whether it is bit-identical and the largest "
                   "absolute difference (prototypes, CDM scores and head, tokens, classifier weights and scores), "
                   "the fraction of generated images with identical bytes, and every variant's metrics in both runs.",
    "multilabel_ablation": "The multi-label method's four variants (`no_synthetic`, `unfiltered`, `filtered`, "
                           "`filtered_tuned`) over several seeds of `digzsl run --config miniworld_multilabel` "
                           "(`python benchmarks/multilabel_ablation.py --seeds 0 1 2`): each seed sets `seed`, "
                           "`prompts.seed`, `tune.seed`, `generate.seed` and `data.val_seed`; ZSL/GZSL mAP and "
                           "P/R/F1, per-label AP (mean over seeds), filter acceptance, the tuning's validation "
                           "acceptance, each variant's validation selection score, wall time and peak memory.",
    "multilabel_ablation_budget": "The multi-label ablation with a larger generation budget (`python "
                                  "benchmarks/multilabel_ablation.py --name multilabel_ablation_budget --set "
                                  "tune.enabled=false --set generate.images_per_label=12 --set generate.max_rows=2000 "
                                  "--set generate.max_rounds=12`): 2,000 generated images per seed instead of 300, so "
                                  "unfiltered trains on all of them and filtered on the ~110 the filter accepts; "
                                  "tuning off (its encoder was never exported at 300). Same keys as multilabel_ablation.",
    "multilabel_floor": "Which multi-label classifier design keeps what the frozen CLIP already knows "
                        "(`python benchmarks/multilabel_floor.py RUN`, no Ray, one kept run's data): the "
                        "validation-class protocol (a third as many seen labels as unseen held out as pseudo-unseen; "
                        "training on the scenes without them), per candidate and variant the history per epoch of "
                        "`val_seen_mAP` (the stage's selection), `valclass_mAP` (pseudo-unseen labels, the ZSL "
                        "protocol one level down) and, for the record only, `test_zsl_mAP`; the floor "
                        "(`clip_zero_shot`) on the same images.",
    "multilabel_oracle": "The MiniWorld oracle's judgement of the multi-label method's generated images, untuned "
                         "(`base`) and tuned text encoder, over the three seeds' kept runs (`python "
                         "benchmarks/multilabel_oracle.py RUN...`, no Ray): the oracle is a single-object classifier, "
                         "so it reads each 32 px window of a 64 px scene (stride 16) and finds a label when a window "
                         "reaches probability `tau`, chosen on the run's real training scenes; per subset (all rows, "
                         "filter-accepted, rejected) the recall of the target labels, the rows with every target found "
                         "(`complete`), precision and top-k recall, exactly and by colour and shape only; the filter's "
                         "agreement (`complete` among accepted against rejected rows); `real_reference`: the same rule "
                         "on the real unseen test scenes.",
    "multilabel_throughput": "The multi-label method's hot loops (`python benchmarks/multilabel_throughput.py`): "
                             "prompt pairs per second (grammar; chat through a tiny random Llama-architecture "
                             "model: the code path, not Llama-2's speed), discriminator images per second (CLIP "
                             "at 64 px, grouping softmax, exact-set rule), and seconds per text-encoder tuning "
                             "step in a bare single-process loop vs inside the Ray Train worker of the stage.",
    "zerodiff_ablation": "ZeroDiff++'s four variants (`base` = ZeroDiff, `diffgen`, `difftta`, `full` = "
                         "ZeroDiff++; the last three our reading) over several seeds of `digzsl run --config "
                         "miniworld --set method=zerodiff` (`python benchmarks/zerodiff_ablation.py --seeds 0 1 2`): "
                         "each seed sets `seed`, `drg.seed` = `dfg.seed` = 9182 + seed, `synthetic.seed`, "
                         "`softmax.seed` and `data.val_seed`; ZSL/GZSL under both calibrations, the validation "
                         "fold's figures (what the choices were made on), pseudo-label counts and accuracy "
                         "(measurement only), the spuriousness metrics, wall time and peak memory; the floor "
                         "`clip_zero_shot`; `validation_gap_H` (validation-fold H minus test H per variant).",
    "zerodiff_scarce": "ZeroDiff++'s variants in the scarce-data regime (`python benchmarks/zerodiff_scarce.py`): "
                       "`features.train_fraction` 0.1 and 0.3 with 300 / 100 generator epochs (about 1,200 "
                       "generator steps, so the critics see each training feature hundreds of times), three seeds; "
                       "per fraction the ablation's figures, the spuriousness and its curve over the DFG epochs.",
    "zerodiff_beat_clip": "Evaluation-only recipes on finished ZeroDiff runs against the floor "
                          "(`python benchmarks/zerodiff_beat_clip.py RUN...`): more synthetic features per class, "
                          "the classifier input ([x ; r] or x), the GZSL classifier for ZSL; test and validation "
                          "figures of every variant.",
    "zerodiff_scale": "ZeroDiff's throughput and memory (`python benchmarks/zerodiff_scale.py`): feature extraction "
                      "(MiniWorld CLIP tower, bare in-process vs the stage's Ray Data actor pool, PNG decoding "
                      "included), one DFG epoch as a bare single-process loop vs inside the stage's Ray Train "
                      "workers, and SUN scale (717 classes, 14,340 x 2,048 features, reference widths 4096): "
                      "peak memory of the Parquet round trip and of DFG training steps, an epoch's time "
                      "extrapolated from the measured steps.",
    "compare_miniworld": "`digzsl compare` of DIG-ZSL's and ZeroDiff's three-seed MiniWorld runs "
                         "(`benchmarks/ablation.py` and `benchmarks/zerodiff_ablation.py` with `--keep`, then "
                         "`digzsl compare <six run dirs> --out DIR`; DIR/compare.json copied here).",
    "gpu": "SD-1.5-sized UNet/VAE/text encoder (random weights) at 512x512, 30 steps, fp16: images per second "
           "with SDPA (and xformers), seconds per DCT update, and each as a fraction of the FLOP lower bound at "
           "the GPU's peak. Runs only where CUDA is present.",
}


def fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def main() -> None:
    lines = ["# Benchmarks", "",
             "Scripts in this folder print one JSON line each and save it to `results/<name>.json` with the "
             "machine they ran on. `make bench` runs the CPU ones and rewrites this file. They are never "
             "collected as tests.", ""]
    for name in ("dct_step", "token_scaling", "generation", "serve", "pipeline", "ablation", "beat_clip",
                 "ablation-h4", "ablation-h1", "ablation-h3", "token_hypotheses", "classifier_stage", "determinism", "diagnose",
                 "multilabel_ablation", "multilabel_ablation_budget", "multilabel_oracle", "multilabel_floor", "multilabel_throughput", "zerodiff_ablation", "zerodiff_scarce",
                 "zerodiff_beat_clip", "zerodiff_scale",
                 "compare_miniworld", "live", "live-extend", "live-excluded-class", "live-excluded-class-extend", "gpu"):
        p = HERE / "results" / f"{name}.json"
        about = ABOUT.get(name) or ABOUT.get(name.split("-")[0], "")
        if name.startswith("ablation-h"):
            about = ("A token-side hypothesis of the issue \"Beat the frozen CLIP\" (docs/DESIGN.md section 5a), three seeds "
                     "from copies of the ablation's runs with one setting changed (`settings`); plain-prompt images "
                     "are not regenerated (they do not depend on it): compare `dct` with the ablation's.")
        lines += [f"## {name}", "", about, ""]
        if not p.is_file():
            lines += ["*Not run on this machine yet* " + ("(no GPU available to this project)." if name == "gpu"
                                                          else "."), ""]
            continue
        r = json.loads(p.read_text())
        m = r.get("machine", {})
        lines.append(f"Latest: {m.get('date')} on {m.get('cpu')} ({m.get('cores')} cores, "
                     f"{m.get('memory_gb')} GB, GPU: {m.get('gpu') or 'none'}); torch {m.get('versions', {}).get('torch')}, "
                     f"ray {m.get('versions', {}).get('ray')}.")
        lines.append("")
        lines.append("```json")
        # per-run details stay in results/<name>.json (beat_clip's would fill thousands of lines here)
        lines.append(json.dumps({k: v for k, v in r.items() if k not in ("machine", "benchmark", "per_run")}, indent=2))
        lines.append("```")
        for key, op, target in TARGETS.get(name, []):
            v = r.get(key)
            ok = v is not None and (v <= target if op == "<=" else v >= target)
            lines.append(f"- `{key}` = {fmt(v)} (target {op} {target}): **{'met' if ok else 'missed'}**")
        notes = HERE / "notes" / f"{name}.md"
        if notes.is_file():
            lines += ["", notes.read_text().strip()]
        lines.append("")
    (HERE / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
