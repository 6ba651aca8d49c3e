"""Whether two checkouts compile the same train step: the optimised XLA program of the original recipe's step
(mini pair, batch 32), with source locations stripped, instruction by instruction.

A speed claim "unchanged by this change" is at the noise floor of a timing on a shared machine; the same
compiled program is a proof. Each checkout's program is built in its own child process.

    git worktree add /tmp/before <commit>
    python benchmarks/program_diff.py /tmp/before . --seq-len 128 16
"""

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import re, sys, warnings
repo, seq = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, repo)
import equinox as eqx, jax, numpy as np
import distilbert_eqx
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.models import BertConfig, BertForSequenceClassification
from distilbert_eqx.train import init_state, make_optimizer, train_step
try:  # the loss as terms (distill/)
    from distilbert_eqx.batch import Batch
    from distilbert_eqx.distill import Objective
    from distilbert_eqx.distill.terms import CE, KL, Cos
    objective = Objective([CE(1.0), KL(0.45, temperature=2.0), Cos(0.1)])
except ImportError:  # a checkout from before them
    from distilbert_eqx.data import Batch
    from distilbert_eqx.train import LossConfig
    objective = LossConfig(2.0, 1.0, 0.45, 0.1)
assert distilbert_eqx.__file__.startswith(repo), distilbert_eqx.__file__
config = BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
kt, ks, kk = jax.random.split(jax.random.key(0), 3)
teacher = eqx.nn.inference_mode(BertForSequenceClassification(config, key=kt))
student = eqx.nn.inference_mode(student_from_teacher(teacher, key=ks))
optimizer, _ = make_optimizer(5e-5, 0.01, 0.06, 100)
state = init_state(student, optimizer, key=kk)
ids = np.ones((32, seq), np.int32)
batch = Batch(ids, np.ones((32, seq), bool), np.zeros_like(ids), np.zeros(32, np.int32), np.ones(32, np.float32))
warnings.simplefilter("ignore")  # .lower() warns about donation
lowered = train_step.lower(teacher, state, batch, optimizer, objective)
sys.stdout.write(lowered.compile().compiled.as_text())
"""


def instructions(repo: Path, seq: int) -> list[str]:
    """The program's instructions, without metadata and stack-frame ids (they name source files and lines)."""
    text = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo.resolve()), str(seq)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [line for line in text.splitlines() if " = " in line]
    return [re.sub(r",? ?(metadata=\{[^}]*\}|stack_frame_id=\d+)", "", line) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--seq-len", type=int, nargs="+", default=[128, 16])
    args = parser.parse_args()
    for seq in args.seq_len:
        a, b = instructions(args.before, seq), instructions(args.after, seq)
        diff = [line for line in difflib.unified_diff(a, b, lineterm="", n=0) if line[:1] in "+-"][2:]
        print(f"32 x {seq}: {len(a)} instructions before, {len(b)} after, {len(diff) // 2} changed")
        for line in diff:
            print(f"  {line[:300]}")


if __name__ == "__main__":
    main()
