"""The fused kernel computes the model's own routed attention (official weights, real routing)."""

from __future__ import annotations

import pytest
import torch

import edge_biformer
from edge_biformer.kernels import routed_attention
from edge_biformer.models.bra import BiLevelRoutingAttention, pad_to_multiple
from edge_biformer.testing import assert_close
from tests.conftest import REFERENCE_DIR, SMALL_W7


def _block_inputs(
    model: torch.nn.Module, x: torch.Tensor
) -> list[tuple[BiLevelRoutingAttention, torch.Tensor]]:
    """Run the model and keep the (normalised) input of every BRA block."""
    captured: list[tuple[BiLevelRoutingAttention, torch.Tensor]] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: captured.append((mod, args[0])))
        for m in model.modules()
        if isinstance(m, BiLevelRoutingAttention)
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return captured


@pytest.mark.parametrize(
    ("overrides", "size"),
    [({}, (224, 224)), ({"n_win": 8, "auto_pad": True}, (200, 232))],
    ids=["official_small_w7", "autopad_w8"],
)
def test_kernel_matches_model_bra(golden, overrides, size) -> None:
    model = edge_biformer.create_model(
        "biformer_tiny", weights=REFERENCE_DIR / "official_small_w7.pth", **{**SMALL_W7, **overrides}
    )
    x = torch.from_numpy(golden["x"]) if size == (224, 224) else torch.randn(1, 3, *size)
    blocks = _block_inputs(model, x)
    assert len(blocks) == 4  # depth [1, 1, 2, 1]: stages 1-3 are BRA
    for attn, block_input in blocks:
        with torch.no_grad():
            padded = pad_to_multiple(block_input, attn.n_win) if attn.auto_pad else block_input
            q, k, v, _, r_idx = attn.route(padded)
            expected = attn.routed_attention(q, k, v, r_idx)
            fused = routed_attention(q, k, v, r_idx.int(), num_heads=attn.num_heads, scale=attn.scale)
        assert fused.shape == expected.shape
        assert_close(fused, expected, max_abs=1e-4 * max(1.0, expected.abs().max().item()))
