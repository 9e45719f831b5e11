"""Reference implementations of the custom ops that the graph rewrite introduces."""

from edge_biformer.ops.bra_reference import check_routed_attention_inputs, routed_attention_reference

__all__ = ["check_routed_attention_inputs", "routed_attention_reference"]
