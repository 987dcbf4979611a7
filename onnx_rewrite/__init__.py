"""Rewrite an exported ONNX Conformer so that TensorRT's ONNX parser runs our plugins.

    conformer-trt onnx-rewrite model.onnx --plugins DIR --out model.plugins.onnx [--report r.json]

Each LayerNorm (with the residual add before it) and each convolution module that matches
exactly becomes one node ``ct_layernorm`` / ``ct_conv_module`` in the ``trt.plugins`` domain, and
each multi-head attention (ESPnet's relative-position form, WeNet's un-shifted one, or plain)
whose subgraph computes what the plugin computes, checked by numbers, one ``ct_relpos_attention``,
with the kernel's static dims and scalars as attributes and ``plugin_version`` /
``plugin_namespace`` from the library's manifest. TensorRT's parser imports an op it does not know
through the plugin creator of that name, passing the attributes the creator declares as its
PluginFields (INT -> kINT32, FLOAT -> kFLOAT32). Candidates that do not match exactly are left
as they were and reported with the reason.
"""
from .match import Left, Match
from .rewrite import DOMAIN, Library, Report, RewriteError, rewrite

__all__ = ["DOMAIN", "Left", "Library", "Match", "Report", "RewriteError", "rewrite"]
