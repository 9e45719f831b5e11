"""Routing ties: a sample whose routing flipped first at a tie of the precision is left out of the
elementwise rule only, a flip at a wide margin never is, and the other rules judge every sample."""

from __future__ import annotations

import numpy as np

from edge_biformer.check.judge import judge, tie_exclusion
from edge_biformer.check.routing import tie_flips
from edge_biformer.check.runners import Target


def _block(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """A reference block: its routing logits [N, R, regions] and their top-k indices."""
    return {"logits": logits, "indices": np.argsort(-logits, axis=-1, kind="stable")[..., :k]}


def _routing() -> tuple[dict, dict]:
    """Two routed blocks (topk 1 and 2 of 4 regions) and a block of all regions, 5 samples x 2 regions.

    Sample 0 flips block 1 at a tie; 1 flips block 1 at a wide margin; 2 flips block 1 at a tie and
    then block 2 widely (the consequence); 3 keeps its routing; 4 flips block 1 in one region at a
    tie and in the other widely.
    """
    base = np.array([4.0, 3.0, 1.0, 0.0])  # spread 4; top-1 margin 1, top-2 margin 2
    l1 = np.tile(base, (5, 2, 1))
    l1[[0, 2, 4], 0, 1] = 4.0 - 1e-4  # a tie of the first two regions: margin 1e-4 = 2.5e-5 of the spread
    l2 = np.tile(base, (5, 2, 1))
    l3 = np.tile(base, (5, 2, 1))
    reference = {"b1": _block(l1, 1), "b2": _block(l2, 2), "all": _block(l3, 4)}
    act = {name: {"indices": block["indices"].copy()} for name, block in reference.items()}
    act["b1"]["indices"][[0, 2], 0, 0] = 1  # the tied runner-up wins
    act["b1"]["indices"][1, 1, 0] = 2  # the third region wins at margin 3: not a tie
    act["b1"]["indices"][4, 0, 0] = 1
    act["b1"]["indices"][4, 1, 0] = 3
    act["b2"]["indices"][2, 0] = [0, 3]  # a consequence of sample 2's first flip
    act["all"]["indices"][:, :, :] = act["all"]["indices"][:, :, ::-1]  # order only: all regions
    return reference, act


def test_tie_flips_follow_the_first_flipped_block() -> None:
    reference, actual = _routing()
    tied, blocks = tie_flips(reference, actual, 1e-3)
    assert tied.tolist() == [True, False, True, False, False]
    assert blocks == ["b1"]
    none, _ = tie_flips(reference, actual, 1e-6)  # a tighter resolution: none of these is a tie
    assert not none.any()
    same, _ = tie_flips(reference, {k: {"indices": v["indices"]} for k, v in reference.items()}, 1e-3)
    assert not same.any()


def test_blocks_are_paired_by_order_when_names_differ() -> None:
    reference, actual = _routing()
    renamed = {f"x{i}": block for i, block in enumerate(actual.values())}
    assert tie_flips(reference, renamed, 1e-3)[0].tolist() == [True, False, True, False, False]


def test_tie_exclusion_static_batches_drop_whole_batches() -> None:
    tied = np.array([False, True, False, False, False])
    dynamic = tie_exclusion([3, 2], tied, static_batch=False)
    assert [k.tolist() for k in dynamic] == [[0, 2], [0, 1]]
    static = tie_exclusion([3, 2], tied, static_batch=True)
    assert [k.tolist() for k in static] == [[], [0, 1]]


def test_judge_leaves_tie_flipped_samples_out_of_the_elementwise_rule_only() -> None:
    rng = np.random.default_rng(0)
    ref = [{"logits": rng.standard_normal((4, 10)).astype(np.float32) * 3} for _ in range(2)]
    out = [{"logits": r["logits"] + 1e-4} for r in ref]
    out[1]["logits"][2, 0] += 0.5  # one sample far outside the FP16 elementwise tolerance
    target = Target("t", "m.fp16.onnx", "fp16", "onnxrt")
    args = {"labels": None, "reference_accuracy": None, "inputs_json": "i.json", "reference_json": "r.json"}
    everything = judge(target, ref, out, **args)
    assert everything.status == "fail" and not everything.polygraphy_pass
    keep = tie_exclusion([4, 4], np.array([False] * 6 + [True, False]), static_batch=False)
    judged = judge(target, ref, out, keep=keep, **args)
    assert judged.status == "pass" and judged.polygraphy_pass, judged.failures
    assert judged.max_abs_diff >= 0.5  # the row still reports every sample's error
    # the other rules still see the left-out sample: its direction wrong fails the cosine rule
    out[1]["logits"][2] = -ref[1]["logits"][2]
    flipped = judge(target, ref, out, keep=keep, **args)
    assert flipped.status == "fail" and flipped.polygraphy_pass
    assert any("cosine" in f for f in flipped.failures)
