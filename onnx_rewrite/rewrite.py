"""The rewrite: find the candidates, check each against the kernel contract and the plugin
library, replace what fits, and say what was left and why."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper

import kernels
from kernels.int4_gemm.packing import GROUPS as INT4_GROUPS
from plugin_gen.codegen import plugin_name

from . import attention, conv_module, layernorm
from . import ffn_gemm as ffn_gemm_module
from .graph import Graph, label
from .match import Left, Match

DOMAIN = "trt.plugins"      # the custom-op domain of TensorRT plugins (onnxruntime's TRT EP too)
MIN_OPSET = 13


def ffn_gemm_forms() -> tuple[str, ...]:
    return tuple(ffn_gemm_module.KERNELS)


class RewriteError(ValueError):
    """The model or the library cannot be rewritten at all (bad input)."""


@dataclass
class Report:
    replaced: list[dict] = field(default_factory=list)
    left: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"replaced": self.replaced, "left": self.left}

    def text(self) -> str:
        lines = [f"onnx-rewrite: {len(self.replaced)} replaced, {len(self.left)} left"]
        for r in self.replaced:
            attrs = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in r["attributes"].items())
            lines.append(f"  replaced {r['kind']} {r['node']} ({r['plugin']} {attrs}): "
                         f"{len(r['nodes'])} nodes and {len(r['dead'])} only they read"
                         + (f"; {r['note']}" if r["note"] else ""))
        for entry in self.left:
            where = ", ".join(entry["nodes"][:3]) + (" ..." if len(entry["nodes"]) > 3 else "")
            lines.append(f"  left {entry['kind']} {where}: {entry['reason']}")
        return "\n".join(lines)


class Library:
    """What a ``plugin-gen build`` folder holds, from its manifest.json: which kernels have a
    TensorRT plugin, and for which static dims and dtypes they were tuned (the plugin's creator
    refuses any other)."""

    def __init__(self, manifest: dict, path: Path):
        self.manifest, self.path = manifest, path

    @classmethod
    def load(cls, path: Path) -> Library:
        path = Path(path)
        file = path / "manifest.json" if path.is_dir() else \
            path if path.suffix == ".json" else path.with_name("manifest.json")
        try:
            manifest = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise RewriteError(f"{file}: no plugin manifest ({err}); --plugins takes the folder "
                               "plugin-gen build wrote") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("kernels"), dict):
            raise RewriteError(f"{file}: not a plugin-gen manifest (no 'kernels')")
        return cls(manifest, file)

    def plugin(self, kernel: str) -> dict | str:
        """The plugin's name/version/namespace, or why the library has none."""
        entry = self.manifest["kernels"].get(kernel)
        if entry is None:
            return f"the library ({self.path}) has no {kernel} kernel"
        if not entry.get("tensorrt_plugin"):
            return (f"the library ({self.path}) has no TensorRT plugin for {kernel}: "
                    f"{entry.get('tensorrt_skipped') or 'not built'}")
        return entry["tensorrt_plugin"]

    def missing_variant(self, kernel: str, shape: dict, dtype: str) -> str | None:
        variants = self.manifest["kernels"][kernel].get("variants", [])
        if any(v.get("dtype") == dtype and all(v.get("bucket", {}).get(d) == x
                                               for d, x in shape.items()) for v in variants):
            return None
        have = sorted({" ".join(f"{d}={v['bucket'].get(d)}" for d in shape) + " " + v["dtype"]
                       for v in variants})
        return (f"the library ({self.path}) has no {kernel} variant for "
                + " ".join(f"{d}={x}" for d, x in shape.items()) + f" {dtype}; it has: "
                + ("; ".join(have) or "none"))


def check_opset(model: onnx.ModelProto) -> int:
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    newest = onnx.defs.onnx_opset_version()
    if not opsets:
        raise RewriteError("the model imports no default-domain opset")
    if not MIN_OPSET <= opsets[0] <= newest:
        raise RewriteError(f"opset {opsets[0]} is outside the supported {MIN_OPSET}..{newest} "
                           f"(onnx {onnx.__version__})")
    return opsets[0]


def _check_fit(m: Match) -> None:
    """A candidate whose structure matched but whose sizes or dtype no plugin can take."""
    k = kernels.get(m.kernel)
    where = label(m.nodes[-1])
    if m.dtype not in k.dtypes:
        raise RewriteError(f"{m.kind} at {where}: dtype {m.dtype}; ct_{m.kernel} takes "
                           f"{', '.join(k.dtypes)}")
    for d in k.dims:
        if d.name in m.shape and not d.lo <= m.shape[d.name] <= d.hi:
            raise RewriteError(f"{m.kind} at {where}: {d.name}={m.shape[d.name]} is outside "
                               f"ct_{m.kernel}'s supported [{d.lo}, {d.hi}]")


def _plugin_maker(g: Graph, m: Match, plugin: dict, base: str):
    k = kernels.get(m.kernel)
    present = k.present({**m.shape, **{d: 1 for d in k.dynamic_dims}})
    n_in = sum(t.role == "in" for t in present)
    n_out = len(present) - n_in
    attrs = {**m.shape, **{s: float(m.scalars.get(s, v)) for s, v in k.scalars.items()}}

    def make(inputs: list[str], outputs: list[str]) -> onnx.NodeProto:
        if (len(inputs), len(outputs)) != (n_in, n_out):
            raise AssertionError(f"{plugin['name']} takes {n_in} inputs and {n_out} outputs")
        return helper.make_node(plugin["name"], inputs, outputs, domain=DOMAIN,
                                name=g.fresh(f"{base}/{plugin['name']}"),
                                plugin_version=plugin["version"],
                                plugin_namespace=plugin["namespace"], **attrs)
    return make, attrs


def _base(nodes: list[onnx.NodeProto]) -> str:
    """Where the new nodes are named: beside the node that made the subgraph's output."""
    name = nodes[-1].name
    return name[:name.rfind("/")] if "/" in name else name


def rewrite(model: onnx.ModelProto, library: Library | None = None, ffn_gemm: str | None = None,
            int4_group: int = 128, int4_sym: bool = False) -> tuple[onnx.ModelProto, Report]:
    """A copy of ``model`` with every LayerNorm, conv module and attention that fits a plugin
    replaced by a plugin node, and the report. ``ffn_gemm`` ("int4" or "sparse24") also replaces
    the feed-forward modules' Linears (INT4: quantised per ``int4_group`` input channels,
    asymmetric unless ``int4_sym``). Raises RewriteError for a model it cannot handle."""
    if ffn_gemm not in (None, *ffn_gemm_forms()):
        raise RewriteError(f"ffn_gemm must be one of {ffn_gemm_forms()}, got {ffn_gemm!r}")
    if ffn_gemm == "int4" and int4_group not in INT4_GROUPS:
        raise RewriteError(f"the INT4 group size must be one of {INT4_GROUPS}, got {int4_group}")
    check_opset(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = Graph(out, onnx.shape_inference.infer_shapes(model))
    candidates = layernorm.find(g) + conv_module.find(g) + attention.find(g)
    if ffn_gemm:
        candidates += ffn_gemm_module.find(g, ffn_gemm, int4_group, not int4_sym)
    report = Report()
    claimed: set[int] = set()
    for cand in candidates:
        m, reasons = cand, []
        while isinstance(m, Match):
            _check_fit(m)
            plugin = library.plugin(m.kernel) if library else \
                {"name": plugin_name(kernels.get(m.kernel)), "version": "1", "namespace": ""}
            reason = plugin if isinstance(plugin, str) else \
                library.missing_variant(m.kernel, m.shape, m.dtype) if library else None
            if reason is None and any(id(n) in claimed for n in m.nodes):
                reason = "overlaps another replacement"
            if reason is None:
                break
            reasons.append(reason)
            m = m.fallback
        if isinstance(m, Left):
            report.left.append({"kind": m.kind, "nodes": m.nodes, "reason": m.reason})
            continue
        if m is None:
            report.left.append({"kind": cand.kind, "nodes": [label(n) for n in cand.nodes],
                                "reason": "; ".join(dict.fromkeys(reasons))})
            continue
        claimed |= {id(n) for n in m.nodes}
        make, attrs = _plugin_maker(g, m, plugin, _base(m.nodes))
        new = m.emit(g, make, _base(m.nodes))
        dead = g.replace(m.nodes, new)
        report.replaced.append({
            "kind": m.kind, "plugin": plugin["name"],
            "node": next(n.name for n in new if n.domain == DOMAIN),
            "attributes": attrs, "nodes": [label(n) for n in m.nodes], "dead": dead,
            "added": [n.name for n in new],
            "note": "; ".join(x for x in (*reasons, m.note) if x)})
    if report.replaced and not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return g.finish(), report
