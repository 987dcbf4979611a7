"""Relative-position attention: the reference's rel_shift against its definition, the Triton
kernel (interpreter on CPU, compiled on a GPU) against the float64 reference on ragged, chunked,
odd-sized cases, and bad input refused before launch."""
import pytest
import torch

import kernels
from kernels import contract, expr, gpu, launch, verify
from kernels.relpos_attention import reference, rel_pos_attention

K = kernels.get("relpos_attention")
TRITON = K.impl("triton")


def _shape(b=3, t=37, h=2, dk=32, chunk=0, left=-1, rel=1, packed=0):
    return {"B": b, "T": t, "H": h, "DK": dk, "chunk": chunk, "left_chunks": left,
            "packed": packed, "rel": rel}


@pytest.mark.parametrize("t", [1, 2, 7, 16])
def test_rel_shift_is_the_index_t_minus_1_minus_i_plus_j(t):
    x = torch.randn(2, 3, t, 2 * t - 1, dtype=torch.float64)
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    want = x[..., i, t - 1 - i + j]
    assert torch.equal(reference.rel_shift(x), want)


def test_chunk_mask_is_wenets():
    # WeNet subsequent_chunk_mask(4, 2) = [[1,1,0,0],[1,1,0,0],[1,1,1,1],[1,1,1,1]], and with
    # one left chunk of size 1 each frame sees itself and the one before it.
    full = torch.tensor([4])
    assert reference.attend_mask(full, 4, 2)[0].int().tolist() == \
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert reference.attend_mask(full, 3, 1, 1)[0].int().tolist() == \
        [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert reference.attend_mask(torch.tensor([2]), 3)[0].int().tolist() == [[1, 1, 0]] * 3


CASES = [
    _shape(t=1, h=1, dk=64),
    _shape(t=40, dk=32),
    _shape(b=2, t=33, h=1, dk=128),
    _shape(t=50, h=1, chunk=8, left=1),
    _shape(t=45, h=1, chunk=5, left=-1),
    _shape(t=29, h=1, chunk=64, left=0),
    _shape(t=35, dk=64, rel=0),
    _shape(t=24, h=1, chunk=4, left=2, rel=0),
    _shape(t=1, h=1, dk=64, rel=2),
    _shape(t=43, dk=32, rel=2),
    _shape(t=50, h=1, chunk=8, left=1, rel=2),
    _shape(t=40, dk=32, packed=1),
    _shape(t=24, h=1, chunk=4, left=2, rel=0, packed=1),
    _shape(t=43, dk=32, rel=2, packed=1),
]
CONFIGS = [None,   # the heuristic
           {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 1},
           {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_matches_reference(device, shape, dtype):
    spec = gpu.running().spec if device.type == "cuda" else gpu.by_name("h100")
    for i, config in enumerate(CONFIGS):
        if config is None:
            config = launch.default_config(K, TRITON, shape, dtype)
        if TRITON.valid(config, shape, dtype, spec) is not None:
            continue
        v = verify.verify(K, TRITON, config, shape, dtype, device, seed=i)
        assert v.ok, f"{shape} {dtype} {config}: {v}"


def _inputs(device, shape, dtype=torch.float16, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    return K.make_inputs(shape, dtype, device, gen)


def _call(x, shape, **kw):
    rel = {k: x[k] for k in ("p", "pos_bias_u", "pos_bias_v") if k in x}
    chunk = {"chunk_size": shape["chunk"]} if shape["chunk"] else {}
    return rel_pos_attention(x["q"], x["k"], x["v"], x["lengths"], shape["H"], **rel, **chunk,
                             num_left_chunks=shape["left_chunks"], **kw)


def test_padded_rows_and_empty_sequences_are_zero(device):
    shape = _shape(b=4, t=40)
    x = _inputs(device, shape)
    x["lengths"] = torch.tensor([40, 17, 0, 1], dtype=torch.int32, device=device)
    out = _call(x, shape)
    assert out.shape == (4, 40, 64) and torch.isfinite(out).all()
    for b, n in enumerate(x["lengths"].tolist()):
        assert not out[b, n:].any()
    assert out[0].abs().sum() > 0 and out[3, 0].abs().sum() > 0
    ref = K.reference(x, shape, {})["out"]
    assert verify.relative_error(out, ref) < K.tolerance["float16"]


def test_lengths_outside_0_t_are_clamped_or_refused(device):
    shape = _shape(b=3, t=20)
    x = _inputs(device, shape)
    x["lengths"] = torch.tensor([25, -4, 20], dtype=torch.int32, device=device)
    clamped = dict(x, lengths=torch.tensor([20, 0, 20], dtype=torch.int32, device=device))
    assert torch.equal(_call(x, shape), _call(clamped, shape))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=20\]"):
        _call(x, shape, check_lengths=True)
    _call(clamped, shape, check_lengths=True)


@pytest.mark.parametrize("rel", [1, 2, 0])
def test_packed_qkv_is_the_same_attention(device, rel):
    """q | k | v packed in one tensor (k = v = None) gives exactly what the three apart give."""
    shape = _shape(t=29, rel=rel)
    x = _inputs(device, shape)
    qkv = torch.cat([x["q"], x["k"], x["v"]], dim=-1)
    legacy = rel == 2
    apart = _call(x, shape, legacy=legacy)
    packed = _call(dict(x, q=qkv, k=None, v=None), shape, legacy=legacy)
    assert torch.equal(packed, apart) and apart.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible by 3"):
        _call(dict(x, q=qkv[..., 1:].contiguous(), k=None, v=None), shape, legacy=legacy)


def test_plain_attention_needs_no_positions(device):
    shape = _shape(t=21, rel=0)
    x = _inputs(device, shape)
    out = rel_pos_attention(x["q"], x["k"], x["v"], x["lengths"], num_heads=2)
    ref = K.reference(x, shape, {})["out"]
    assert verify.relative_error(out, ref) < K.tolerance["float16"]


@pytest.mark.parametrize("change, error, match", [
    (lambda x: dict(x, q=x["q"][..., :48].contiguous(), k=x["k"][..., :48].contiguous(),
                    v=x["v"][..., :48].contiguous()), ValueError, "head dim d_k=24"),
    (lambda x: dict(x, k=x["k"][:, :-1].contiguous()), ValueError, "k has shape"),
    (lambda x: dict(x, p=x["p"][:-1].contiguous()), ValueError, "p has shape"),
    (lambda x: dict(x, pos_bias_v=x["pos_bias_v"].t().contiguous()), ValueError,
     "pos_bias_v has shape"),
    (lambda x: dict(x, pos_bias_u=None), ValueError, "go together"),
    (lambda x: dict(x, lengths=x["lengths"].long()), TypeError, "lengths has dtype torch.int64"),
    (lambda x: dict(x, lengths=x["lengths"][:2].contiguous()), ValueError, "lengths has shape"),
    (lambda x: dict(x, q=x["q"].float()), TypeError, "dtype"),
    (lambda x: dict(x, v=x["v"].transpose(0, 1)), ValueError, "contiguous|v has shape"),
    (lambda x: dict(x, q="q"), TypeError, "q must be a torch.Tensor"),
])
def test_bad_input_is_refused(device, change, error, match):
    x = change(_inputs(device, _shape(t=9)))
    with pytest.raises(error, match=match):
        rel_pos_attention(x["q"], x["k"], x["v"], x["lengths"], 2, x["p"], x["pos_bias_u"],
                          x["pos_bias_v"])


@pytest.mark.parametrize("kw, match", [
    ({"num_heads": 3}, "num_heads=3"),
    ({"num_heads": 2, "chunk_size": 0}, "chunk_size must be an int >= 1"),
    ({"num_heads": 2, "chunk_size": -16}, "chunk_size must be an int >= 1"),
    ({"num_heads": 2, "num_left_chunks": 1.5}, "num_left_chunks must be an int"),
    ({"num_heads": 2, "impl": "cutlass"}, "no implementation 'cutlass'"),
])
def test_bad_arguments_are_refused(device, kw, match):
    x = _inputs(device, _shape(t=9))
    with pytest.raises(ValueError, match=match):
        rel_pos_attention(x["q"], x["k"], x["v"], x["lengths"], p=x["p"],
                          pos_bias_u=x["pos_bias_u"], pos_bias_v=x["pos_bias_v"], **kw)


def test_space_rules_and_heuristic():
    h100 = gpu.by_name("h100")
    shape = _shape(b=32, t=500, h=4, dk=64)
    base = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
    assert TRITON.valid(base, shape, "float16", h100) is None
    assert "BLOCK_M > BLOCK_N" in TRITON.valid({**base, "BLOCK_M": 128}, shape, "float16", h100)
    assert TRITON.valid({**base, "BLOCK_M": 128}, {**shape, "rel": 0}, "float16", h100) is None
    assert "shared memory" in TRITON.valid({**base, "BLOCK_N": 128, "num_stages": 4}, shape,
                                           "float16", h100)
    assert "longer than the sequence" in TRITON.valid(base, {**shape, "T": 20}, "float16", h100)
    for t in (1, 15, 16, 100, 500, 2000, 4096):
        for dk in (32, 64, 128):
            for rel in (0, 1):
                s = {**shape, "T": t, "DK": dk, "rel": rel}
                config = TRITON.heuristic(s, "float16", h100)
                assert TRITON.valid(config, s, "float16", h100) is None, (s, config)
    with pytest.raises(ValueError, match="head dim d_k=48"):
        TRITON.constants(base, {**shape, "DK": 48}, "float16")


def test_cost_and_tune_shapes():
    from kernels.contract import ModelDims

    shape = _shape(b=32, t=500, h=4, dk=64)
    assert K.cost(shape, "float16").flops == 6 * 32 * 4 * 500 * 500 * 64
    assert K.cost({**shape, "rel": 0}, "float16").flops == 4 * 32 * 4 * 500 * 500 * 64
    shapes = K.tune_shapes(ModelDims())
    assert {s["rel"] for s in shapes} == {0, 1, 2}
    legacy = K.cost({**shape, "rel": 2}, "float16")
    assert legacy.flops == K.cost(shape, "float16").flops
    assert K.cost(shape, "float16").bytes - legacy.bytes == 499 * 4 * 64 * 2   # p: T-1 rows less
    assert all(s["DK"] == 64 and s["T"] == 500 and s["B"] == 32 for s in shapes)


def test_legacy_form_is_wenets(device):
    """rel=2 against the conformer package's independent functional reference (einsum, no
    rel_shift for a T-row p), and refused without positions."""
    from conformer.attention import rel_pos_attention_reference

    shape = _shape(b=3, t=23, h=2, dk=32, rel=2)
    x = _inputs(device, shape)
    out = _call(x, shape, legacy=True)
    b, t, h, dk = 3, 23, 2, 32
    ref = rel_pos_attention_reference(
        *(x[n].double().view(b, t, h, dk) for n in "qkv"), x["p"].double().view(t, h, dk),
        x["pos_bias_u"].double(), x["pos_bias_v"].double(), x["lengths"]).reshape(b, t, h * dk)
    valid = torch.arange(t, device=out.device)[None, :] < x["lengths"][:, None]
    ref = ref.masked_fill(~valid[..., None], 0.0)
    assert verify.relative_error(out, ref) < 1e-2
    with pytest.raises(ValueError, match="legacy=True"):
        rel_pos_attention(x["q"], x["k"], x["v"], x["lengths"], 2, legacy=True)


def test_cuda_impl_takes_fp16_and_bf16_only():
    """fp32 goes to the Triton implementation: the CUDA one refuses it by name, in its rule and
    before any constant reaches the compiler, and the tuner never makes a task of it."""
    from autotune import space
    from kernels import contract
    from kernels.contract import ModelDims

    cuda = K.impl("cuda")
    shape = _shape(t=9)
    config = cuda.heuristic(shape, "float16", None)
    assert K.dtypes_of(cuda) == ("float16", "bfloat16")
    assert "float32 activations" in cuda.valid(config, shape, "float32", None)
    with pytest.raises(TypeError, match=r"relpos_attention/cuda supports dtypes \['float16', 'bfloat16'\]"):
        contract.resolved_constants(K, cuda, config, shape, "float32")
    tasks = space.tasks(["relpos_attention"], ["float32", "float16"], [ModelDims()])
    assert {(t.impl, t.dtype) for t in tasks} == {("triton", "float32"), ("triton", "float16"),
                                                  ("cuda", "float16"), ("cuda_wgmma", "float16")}


def test_wgmma_impl_is_for_sm90_only_and_compiles_to_hgmma():
    """cuda_wgmma: refused, with the reason, off sm_90, at d_k 32, in fp32 and where its tiles
    would spill, and with 64-key blocks at d_k 64 (wrong on an H100); issue 5's shape with the
    heuristic's 128-key blocks, compiled for an H100 (NVRTC, sm_90a), holds per key block 3 x 4
    warpgroup MMAs for the band (BN + 64 = 192 columns as three n64 pieces over d_k = 64), 2 x 4
    for q . k^T, all with q in registers, and 8 for P . V with P in registers and V read
    transposed (MN-major), as its cuobjdump SASS shows."""
    import re

    from kernels import gpu
    from tests.sass import sass_of

    impl = K.impl("cuda_wgmma")
    shape = _shape(b=32, t=500, h=4, dk=64)
    h100 = gpu.by_name("h100")
    config = impl.heuristic(shape, "float16", h100)
    assert impl.valid(config, shape, "float16", h100) is None
    for name in ("a10", "l4", "a100"):
        assert "sm_90" in impl.valid(config, shape, "float16", gpu.by_name(name))
    assert "head dim 32" in impl.valid(config, {**shape, "DK": 32}, "float16", h100)
    assert "float32" in impl.valid(config, shape, "float32", h100)
    assert "spill" in impl.valid({**config, "BN": 128}, {**shape, "DK": 128}, "float16", h100)
    assert "wrong results" in impl.valid({**config, "BN": 64}, shape, "float16", h100)
    sass = sass_of("relpos_attention", "cuda_wgmma", config, shape)
    mmas = re.findall(r"HGMMA\.64x64x16\.F32 R\d+, (\S+), gdesc\[\w+\](\.tnspB)?", sass)
    assert all(a.startswith("R") for a, _ in mmas), sass[-2000:]
    assert sum(not t for _, t in mmas) == 20 and sum(bool(t) for _, t in mmas) == 8, mmas


def test_wgmma_warp_specialised_compiles_to_a_producer_and_two_consumers():
    """cuda_wgmma's WS 1 (with PP 1) at issue 5's shape: refused, with the reason, without two
    computing warpgroups, with CARRY, with the band through shared memory, and PP without WS;
    accepted, it launches 384 threads and compiles (sm_90a) to a producer that gives its
    registers back (setmaxnreg 24) and arrives on the stages' mbarriers as its cp.async land,
    and consumers that take 240 registers, read q + u and q + v by descriptor (20 MMAs per block
    with no register operand) and P from registers (8), take turns by named barrier, and spill
    nothing (every local store is the producer's, after its setmaxnreg)."""
    import re

    from kernels import gpu
    from tests.sass import sass_of

    impl = K.impl("cuda_wgmma")
    shape = _shape(b=32, t=2000, h=4, dk=64)
    h100 = gpu.by_name("h100")
    config = {"BN": 128, "WG": 2, "STAGES": 2, "CARRY": 0, "SKEW": 1, "WS": 1, "PP": 1}
    assert impl.valid(config, shape, "float16", h100) is None
    for change in ({"WG": 1}, {"CARRY": 1}, {"SKEW": 0}):
        assert "WS" in impl.valid({**config, **change}, shape, "float16", h100)
    assert "PP" in impl.valid({**config, "WS": 0}, shape, "float16", h100)
    consts = contract.resolved_constants(K, impl, config, shape, "float16")
    assert consts["SMEM"] <= h100.smem_per_block
    assert expr.evaluate(impl.launches[0].threads, consts) == 384
    sass = sass_of("relpos_attention", "cuda_wgmma", config, shape)
    dealloc = re.search(r"/\*([0-9a-f]+)\*/\s+USETMAXREG\.DEALLOC\.CTAPOOL 0x18\b", sass)
    assert dealloc and re.search(r"USETMAXREG\.TRY_ALLOC\.CTAPOOL \w+, 0xf0\b", sass), sass[-3000:]
    assert "ARRIVES.LDGSTSBAR" in sass and "SYNCS.PHASECHK" in sass and "BAR.ARV" in sass
    ss = re.findall(r"HGMMA\.64x64x16\.F32 R\d+, gdesc\[", sass)
    rs = re.findall(r"HGMMA\.64x64x16\.F32 R\d+, R\d+, gdesc\[\w+\]\.tnspB", sass)
    assert len(ss) == 20 and len(rs) == 8, (len(ss), len(rs))
    spills = [int(a, 16) for a in re.findall(r"/\*([0-9a-f]+)\*/\s+(?:STL|LDL)\b", sass)]
    assert all(a > int(dealloc.group(1), 16) for a in spills), spills[:4]


@pytest.mark.parametrize("arch", ["sm_86", "sm_90"])
def test_register_skew_needs_no_shared_band(arch):
    """SKEW 1 (cuda): the ESPnet band is skewed by lane shuffles, so the kernel stores none of it
    in shared memory (the only shared stores left are q + u and q + v, staged once: twice the
    stores of the plain form's q alone, however the compiler unrolls that staging) and keeps it
    all in registers without spilling, at issue 5's shape (with 64-key blocks of one m16 tile per
    warp, and with the heuristic's config); its shared memory is never larger."""
    import re

    from tests.sass import sass_of

    cuda = K.impl("cuda")
    shape = _shape(b=32, t=500, h=4, dk=64)
    base = {"BN": 64, "WARPS": 4, "STAGES": 2, "MT": 1}
    configs = {"shared": {**base, "SKEW": 0}, "registers": {**base, "SKEW": 1},
               "heuristic": cuda.heuristic(shape, "float16", None)}
    assert configs["heuristic"]["SKEW"] == 1
    smem = {}
    for name, config in configs.items():
        assert cuda.valid(config, shape, "float16", None) is None
        smem[name] = contract.resolved_constants(K, cuda, config, shape, "float16")["SMEM"]
        sass = sass_of("relpos_attention", "cuda", config, shape, arch=arch)
        stores = len(re.findall(r"\bSTS(\.\w+)*\s", sass))
        plain = sass_of("relpos_attention", "cuda", {**config, "SKEW": 0}, {**shape, "rel": 0}, arch=arch)
        q_stores = len(re.findall(r"\bSTS(\.\w+)*\s", plain))
        usage = sass_of("relpos_attention", "cuda", config, shape, arch=arch, flag="-res-usage")
        assert re.search(r"LOCAL:0\b", usage) and re.search(r"STACK:0\b", usage), usage
        assert q_stores >= 1
        if config["SKEW"]:
            assert stores == 2 * q_stores and sass.count("SHFL.IDX") >= 32, (stores, q_stores)
        else:
            assert stores > 2 * q_stores
    assert smem["registers"] <= smem["shared"] and smem["heuristic"] <= smem["shared"]
    assert "no band" in cuda.valid({**base, "SKEW": 1}, {**shape, "rel": 0}, "float16", None)


def test_wgmma_register_skew_is_warp_uniform_and_fits_two_ctas_per_sm():
    """cuda_wgmma with SKEW 1 at issue 5's shape (BN 128, one warpgroup): each warp's skew is a
    case of a switch on the warp's index; ptxas compiles its shuffles as plain SHFL only where it
    knows the switch is warp-uniform (else every shuffle is a possibly divergent collective,
    WARPSYNC ... ENDCOLLECTIVE), and q + u, q + v staged in the last stage leave room for two
    CTAs on an H100 multiprocessor (228 KB, 1 KB of it reserved per CTA) and their registers
    (2 x 128 threads x at most 255)."""
    import re

    from kernels import gpu
    from tests.sass import sass_of

    impl = K.impl("cuda_wgmma")
    shape = _shape(b=32, t=2000, h=4, dk=64)
    h100 = gpu.by_name("h100")
    config = {"BN": 128, "WG": 1, "STAGES": 2, "CARRY": 0, "SKEW": 1, "WS": 0, "PP": 0}
    assert impl.valid(config, shape, "float16", h100) is None
    sass = sass_of("relpos_attention", "cuda_wgmma", config, shape)
    assert "ENDCOLLECTIVE" not in sass and "WARPSYNC" not in sass
    assert len(re.findall(r"\bSHFL\.IDX\b", sass)) >= 4 * 64   # 64 per warp's case and block
    smem = contract.resolved_constants(K, impl, config, shape, "float16")["SMEM"]
    assert 2 * (smem + 1024) <= h100.smem_per_sm, smem
    usage = sass_of("relpos_attention", "cuda_wgmma", config, shape, flag="-res-usage")
    assert re.search(r"LOCAL:0\b", usage) and re.search(r"STACK:0\b", usage), usage
