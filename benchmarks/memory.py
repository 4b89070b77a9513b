"""Peak memory of a process that serves one model: torch imported, the model loaded at a tier,
the decode kernels built, 64 tokens generated after a 512-token prompt. Each tier in a fresh
process (peak RSS, VmHWM, only grows), on random weights saved by transformers.

    python benchmarks/memory.py                 # 124M -> benchmarks/MEMORY.md
    python benchmarks/memory.py --configs gpt2,gpt2-medium
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import json, sys, torch
def hwm():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(status[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS")}
marks = {"torch imported": hwm()}
sys.path.insert(0, sys.argv[3])
import gpt2
model = gpt2.load_model(sys.argv[1], **gpt2.TIERS[sys.argv[2]])
model.compile_status.wait()
marks["loaded, kernels built"] = hwm()
ids = torch.randint(0, model.config.vocab_size, (1, 512), generator=torch.Generator().manual_seed(0))
gpt2.generate(model, ids, 64)
marks["after 512 + 64 tokens"] = hwm()
print(json.dumps(marks))
"""


def measure(checkpoint: Path, tier: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint), tier, str(root)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="gpt2")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose gpt2 is measured")
    parser.add_argument("--out", type=Path, default=HERE / "MEMORY.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import gpt2
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from common import machine_line

    lines = ["# Peak memory of a serving process", "",
             f"Command: `python benchmarks/memory.py --configs {args.configs}`. Date: "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Each row a fresh "
             "process: import torch, `gpt2.load_model(folder, <tier>)`, wait for the decode kernels, "
             "`gpt2.generate` 64 tokens after a 512-token prompt. MB = MiB of VmHWM (peak RSS) / VmRSS "
             "(now) after each stage; random weights saved by transformers (seed 0).", "",
             "| model | tier | torch imported: peak | loaded, kernels built: peak / now | after 512 + 64 tokens: peak / now | peak over torch's |",
             "|---|---|---:|---:|---:|---:|"]
    for name in args.configs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            hf = {k: v for k, v in gpt2.PRESETS[name].to_hf().items() if k not in ("model_type", "architectures")}
            GPT2LMHeadModel(GPT2Config(**hf)).save_pretrained(tmp)
            for tier in ("int8", "bf16", "fp32"):
                m = measure(Path(tmp), tier, args.root)
                base, loaded, done = m["torch imported"], m["loaded, kernels built"], m["after 512 + 64 tokens"]
                lines.append(f"| {name} | {tier} | {base['VmHWM']} | {loaded['VmHWM']} / {loaded['VmRSS']} | "
                             f"{done['VmHWM']} / {done['VmRSS']} | {done['VmHWM'] - base['VmHWM']} |")
                print(lines[-1], flush=True)
    lines += ["", machine_line()]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
