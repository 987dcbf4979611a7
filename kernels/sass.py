"""SASS of compiled CUDA kernels, through the cuobjdump that Triton bundles, and a check of it.

``overlap_register_hazards``: registers that the SASS of a pipelined warpgroup-MMA loop
overwrites while a wgmma may still read them. A wgmma with its A operand in registers (``HGMMA
Rd, Ra, gdesc[..]``: Ra .. Ra + 3) and the sparse form's metadata register (``HGMMA.SP .., Re,
sel``) reads them asynchronously until a ``WARPGROUP.DEPBAR`` retires its group, but ptxas (NVRTC
13.0 and 13.5 alike) allocates as if the reads were done at issue: INT4 ``cuda_wgmma`` with
OVERLAP 1 had both register sets in R56 .. R71 and the next stage's dequantisation overwrote the
running stage's fragments (wrong results on an H100, 2026-12-07). Whether a binary has such
writes depends on the compiler, so kernels whose OVERLAP relies on their absence check every
binary they build (``Impl.binary_check``).

The check, for the OVERLAP pipeline (stages alternate between two register sets, each stage
retiring all but its own group): a group's registers may be written only in its own straight-line
code ahead of its first HGMMA -- anywhere else in the loop, or after it before the final full
wait, the write can meet the group (or its previous instance) still running. Writes are taken as
the first operand of an instruction that has a destination, of the width its suffix says."""
import re
import subprocess
import tempfile
from pathlib import Path

_LINE = re.compile(r"/\*([0-9a-f]{4,6})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_NO_DEST = {"ST", "STS", "STG", "STL", "STSM", "BRA", "BAR", "EXIT", "DEPBAR", "WARPGROUP", "LDGSTS",
            "LDGDEPBAR", "RED", "MEMBAR", "FENCE", "NOP", "YIELD", "BSSY", "BSYNC", "WARPSYNC", "CALL",
            "RET", "ERRBAR", "CCTL", "SYNCS", "HGMMA", "VOTEU", "UTMALDG", "UTMASTG"}


def _reg(op: str):
    m = re.fullmatch(r"R(\d+)(\.\w+)*", op.strip())
    return int(m.group(1)) if m else None


def _writes(opcode: str, ops) -> set:
    parts = opcode.split(".")
    if parts[0] in _NO_DEST or not ops or _reg(ops[0]) is None:
        return set()
    width = 4 if "128" in parts or (parts[0] == "LDSM" and "4" in parts) else \
        2 if "64" in parts or "WIDE" in parts or (parts[0] == "LDSM" and "2" in parts) else 1
    return set(range(_reg(ops[0]), _reg(ops[0]) + width))


def _reads(opcode: str, ops) -> set:
    """What an HGMMA reads asynchronously from registers: its A fragment and sparse metadata."""
    regs = set()
    if len(ops) > 1 and _reg(ops[1]) is not None:
        regs.update(range(_reg(ops[1]), _reg(ops[1]) + 4))
    if ".SP" in opcode:
        meta = [_reg(o) for o in ops[4:] if _reg(o) is not None]
        regs.update(meta[:1])
    return regs


def overlap_register_hazards(sass: str) -> list:
    """'address opcode writes Rn of the group at address' for each write the rule above forbids."""
    code = []
    for line in sass.splitlines():
        m = _LINE.search(line)
        if m:
            ops = [o.strip() for o in m.group(4).split(",")] if m.group(4).strip() else []
            code.append((int(m.group(1), 16), m.group(3), ops))
    index = {addr: i for i, (addr, _op, _ops) in enumerate(code)}
    starts, back_targets = {0}, []
    for i, (addr, opcode, ops) in enumerate(code):
        if opcode.startswith("BRA") and ops and ops[-1].startswith("0x"):
            target = index.get(int(ops[-1], 16))
            if target is not None:
                starts.add(target)
                if target <= i:
                    back_targets.append(target)
            starts.add(i + 1)
    groups, first, regs = [], None, set()
    for i, (_addr, opcode, ops) in enumerate(code):
        if opcode.startswith("HGMMA"):
            first = i if first is None else first
            regs |= _reads(opcode, ops)
            if "gsb0" in ops:
                groups.append((first, regs))
                first, regs = None, set()
    if not groups:
        return []
    head = min((t for t in back_targets if t <= groups[0][0]), default=0)
    end = next((i for i in range(groups[-1][0], len(code))
                if code[i][1].startswith("WARPGROUP.DEPBAR") and int(code[i][2][-1], 16) == 0), len(code))
    hazards = []
    for g_first, g_regs in groups:
        window = max(s for s in starts if s <= g_first)
        for i in range(head, end):
            clash = _writes(code[i][1], code[i][2]) & g_regs
            if clash and not window <= i < g_first:
                hazards.append(f"{code[i][0]:#06x} {code[i][1]} writes R{min(clash)} of the group at "
                               f"{code[g_first][0]:#06x}")
    return hazards


def cuobjdump() -> Path:
    """Triton's bundled cuobjdump (FileNotFoundError where it is missing)."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        raise FileNotFoundError(f"Triton's bundled cuobjdump is missing ({tool})")
    return tool


def disassemble(cubin: bytes, flag: str = "-sass") -> str:
    """``cuobjdump -sass`` (or ``flag``: -elf for the kernel's attributes) of a cubin."""
    tool = cuobjdump()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([str(tool), flag, f.name], capture_output=True, text=True)
    # cuobjdump prints every section of -elf, then "Unrecognized opcode" and exits 1
    if done.returncode and not (flag == "-elf" and "EIATTR" in done.stdout):
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


def overlap_check(cubin: bytes, consts) -> str | None:
    """``Impl.binary_check`` of a kernel on wgmma_tiles.cuh: with OVERLAP, refuse a binary whose
    SASS overwrites registers that a running wgmma reads (or that cannot be checked)."""
    if not consts.get("OVERLAP"):
        return None
    try:
        hazards = overlap_register_hazards(disassemble(cubin))
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
        return f"OVERLAP 1 needs its SASS checked, which failed ({e}); use OVERLAP 0"
    if hazards:
        return (f"this compiler's SASS overwrites registers a running wgmma reads ({len(hazards)} "
                f"writes, first: {hazards[0]}), so OVERLAP 1 would give wrong results; use OVERLAP 0")
    return None
