"""The pure helpers of generation: the shard plan and the CDM-score keep thresholds."""

from __future__ import annotations


def test_plan_shards_is_deterministic_and_keyed_by_what_images_depend_on():
    from digzsl_ray.methods.digzsl.generation import plan_shards, shard_rows

    classes = [{"name": "red ring", "label": 3, "slug": "red-ring", "prompts": ["p"] * 5, "token": "<t>",
                "token_sha256": "aa"}]
    a = plan_shards("dct", classes, rows_per_shard=2, seed=1, settings="s")
    assert [len(s.seeds) for s in a] == [2, 2, 1] and a == plan_shards("dct", classes, 2, 1, "s")
    assert len({sd for s in a for sd in s.seeds}) == 5
    assert plan_shards("dct", classes, 2, 1, "other")[0].shard_id != a[0].shard_id
    relearned = [dict(classes[0], token_sha256="bb")]
    assert plan_shards("dct", relearned, 2, 1, "s")[0].shard_id != a[0].shard_id
    assert plan_shards("dct", relearned, 2, 1, "s")[0].seeds == a[0].seeds  # same latents, new token
    rows = shard_rows(a)
    assert [r["index"] for r in rows] == [0, 1, 0, 1, 0] and {r["label"] for r in rows} == {3}


def test_keep_thresholds_keep_the_top_fraction():
    from digzsl_ray.methods.digzsl.generation import keep_thresholds

    t = keep_thresholds({"a": [0.1, 0.9, 0.5, 0.7], "b": [0.2]}, 0.5)
    assert t == {"a": 0.7, "b": 0.2}
    assert keep_thresholds({"a": [0.1, 0.9]}, 1.0) == {"a": None}
