#!/usr/bin/env python3
"""Flash and RAM of the agent core inside a linked firmware, from the linker map.

The archive alone overstates the core: it holds the whole codec, controller-side encoders
and decoders included, while --gc-sections keeps only what the device reaches. So the core
is measured as the input sections of libota_core.a that survived the link, and the Agent
object (a static in the example firmware) is added to the core's RAM by its symbol size.
Exits 1 when the core exceeds the flash or RAM target.
"""
import argparse
import collections
import re
import subprocess
import sys

FLASH_SECTIONS = {".isr_vector", ".text", ".ARM.exidx", ".init_array"}
DATA_SECTIONS = {".data"}  # flash (initial values) and RAM
BSS_SECTIONS = {".bss"}

INPUT_ONE_LINE = re.compile(r"^ (\S+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(.+)$")
INPUT_NAME_ONLY = re.compile(r"^ (\S+)$")
INPUT_CONTINUED = re.compile(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(.+)$")
FILL = re.compile(r"^ \*fill\*\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)")
OUTPUT_SECTION = re.compile(r"^(\.\S+)(\s+0x[0-9a-f]+\s+0x([0-9a-f]+))?")


def parse_map(path):
    """Yields (output section, address, size, object) for every kept input section."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith("Linker script and memory map"))
    out = None
    pending = None
    for line in lines[start + 1:]:
        m = OUTPUT_SECTION.match(line)
        if m:
            out = m.group(1)
            pending = None
            continue
        m = FILL.match(line)
        if m:
            yield out, int(m.group(1), 16), int(m.group(2), 16), "padding"
            continue
        m = INPUT_ONE_LINE.match(line)
        if m and not line.startswith(" *("):
            yield out, int(m.group(2), 16), int(m.group(3), 16), m.group(4).strip()
            pending = None
            continue
        m = INPUT_NAME_ONLY.match(line)
        if m and not line.startswith(" *("):
            pending = m.group(1)
            continue
        m = INPUT_CONTINUED.match(line)
        if m and pending:
            yield out, int(m.group(1), 16), int(m.group(2), 16), m.group(3).strip()
            pending = None


def kept_bytes(entries):
    """Merged string sections (.rodata.*.str1.1) are listed at their pre-merge size and
    overlap; each byte of the output is counted once, for the first section that covers it."""
    covered = {}
    for out, addr, size, obj in sorted(entries, key=lambda e: (e[0], e[1])):
        end = covered.get(out, 0)
        kept = addr + size - max(addr, end)
        if kept > 0:
            covered[out] = addr + size
            yield out, kept, obj


def group_of(obj, core_archive):
    if core_archive in obj:
        return "core"
    if "libfw_support.a" in obj:
        return "start-up, semihosting, SHA-256"
    if obj == "padding":
        return "alignment"
    if obj.endswith(".obj") or obj.endswith(".o"):
        return "application (main, ports)"
    return "toolchain (libc, libgcc, libstdc++)"


def symbol_size(nm, elf, suffix):
    out = subprocess.run([nm, "-S", "-C", elf], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[3].endswith(suffix):
            return int(parts[1], 16)
    sys.exit(f"size_report: symbol {suffix} not found in {elf}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--map", required=True)
    ap.add_argument("--elf", required=True)
    ap.add_argument("--nm", default="arm-none-eabi-nm")
    ap.add_argument("--core-archive", default="libota_core.a")
    ap.add_argument("--archive", help="path of the core archive, for its size before the link")
    ap.add_argument("--size", default="arm-none-eabi-size")
    ap.add_argument("--agent-symbol", default="::g_agent")
    ap.add_argument("--chunk-buffer-symbol", default="::g_transport")
    ap.add_argument("--stack-peak", type=int, help="measured stack of the agent's calls (qemu)")
    ap.add_argument("--flash-limit", type=int, default=32 * 1024)
    ap.add_argument("--ram-limit", type=int, default=8 * 1024)
    args = ap.parse_args()

    sizes = collections.defaultdict(lambda: [0, 0, 0])  # group -> text, data, bss
    core_files = collections.defaultdict(lambda: [0, 0, 0])
    for out, size, obj in kept_bytes(list(parse_map(args.map))):
        if out in FLASH_SECTIONS:
            col = 0
        elif out in DATA_SECTIONS:
            col = 1
        elif out in BSS_SECTIONS:
            col = 2
        else:
            continue
        group = group_of(obj, args.core_archive)
        sizes[group][col] += size
        if group == "core":
            core_files[obj.split("(")[-1].rstrip(")")][col] += size

    def row(label, t, d, b):
        print(f"  {label:<44} {t:>8} {d:>7} {b:>8}")

    print(f"\n{args.elf}: bytes after --gc-sections (.text includes .rodata)")
    row("", "text", "data", "bss")
    for name in sorted(core_files):
        row("core: " + name, *core_files[name])
    total = [0, 0, 0]
    order = ["core", "application (main, ports)", "start-up, semihosting, SHA-256",
             "toolchain (libc, libgcc, libstdc++)", "alignment"]
    for group in order + sorted(set(sizes) - set(order)):
        if group not in sizes:
            continue
        row(group, *sizes[group])
        total = [a + b for a, b in zip(total, sizes[group])]
    row("whole firmware", *total)

    if args.archive:
        out = subprocess.run([args.size, "-t", args.archive], check=True, capture_output=True,
                             text=True).stdout.splitlines()[-1].split()
        row("core archive before the link (all of it)", int(out[0]), int(out[1]), int(out[2]))

    core = sizes["core"]
    agent = symbol_size(args.nm, args.elf, args.agent_symbol)
    chunk = symbol_size(args.nm, args.elf, args.chunk_buffer_symbol)
    flash = core[0] + core[1]
    ram = core[1] + core[2] + agent

    def line(label, value, note=""):
        print(f"  {label:<46} {value:>7} B   {note}".rstrip())

    print()
    line("core flash (.text + .data)", flash, f"target < {args.flash_limit}")
    line("core RAM: own .data + .bss", core[1] + core[2])
    line("          + Agent object (in the app's .bss)", agent)
    line("          = static RAM", ram, f"target < {args.ram_limit}")
    ok = flash < args.flash_limit and ram < args.ram_limit
    if args.stack_peak is not None:
        line("          + stack peak of calls into the agent", args.stack_peak, "(measured on qemu)")
        line("          = RAM with stack", ram + args.stack_peak, f"target < {args.ram_limit}")
        ok = ok and ram + args.stack_peak < args.ram_limit
    line("not counted: chunk buffer (transport object)", chunk,
         "(rx frame: header + OTA_AGENT_MAX_CHUNK_SIZE, topic)")
    print("  not counted: ECDSA P-256 verify (a stub here; mbedTLS, micro-ecc or a hardware engine in a product)")
    print("  size check: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
