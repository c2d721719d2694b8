"""Where the CPU time of a pre-training step goes (issue 16, deliverable 1, training side).

Runs ``--steps`` training steps of :func:`kgml_grid.train.grid_loss` + Adam on a world's
catalog with one torch thread, exactly as :func:`kgml_grid.train.fit` does, and splits
each step's CPU time (``time.process_time``) into: data assembly (``Batches``), the
forward and backward of every module (basis, Ra, Rh, GPP head, NEE, yield head; module
hooks), the loss terms, the response penalty (its extra forwards included), gradient
clipping and the optimiser. One validation pass and the best-state ``deepcopy`` are
timed once. Writes ``train_profile.json`` and ``train_profile.md``.

Usage::

    kgml-grid synth --out /tmp/16t/demo --preset demo
    python benchmarks/train_profile.py --catalog /tmp/16t/demo/catalog.yaml --steps 16 \\
        --out benchmarks/results/train_profile
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from kgml_grid import losses
from kgml_grid import train as T
from kgml_grid.catalog import open_catalog
from kgml_grid.checkpoint import torch_threads

MODULES = {
    "kgml": ("basis", "ra", "rh", "gpp", "nee", "yield_head"),
    "gru": ("gru", "head", "yield_head"),
}


def machine() -> dict[str, Any]:
    """CPU model, core count and load, for the record."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:10]
    return {"lscpu": lscpu, "loadavg_1_5_15": os.getloadavg(), "platform": platform.platform(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}  # fmt: skip


class Timer:
    """Accumulates CPU seconds per label; module hooks push/pop so time is exclusive."""

    def __init__(self) -> None:
        self.sec: dict[str, float] = defaultdict(float)
        self.prefix = ""

    def add(self, label: str, dt: float) -> None:
        self.sec[self.prefix + label] += dt

    def timed(self, label: str, fn: Callable[[], Any]) -> Any:
        t = time.process_time()
        out = fn()
        self.add(label, time.process_time() - t)
        return out


def hook_modules(
    model: torch.nn.Module, names: tuple[str, ...], timer: Timer, captured: dict[str, Any]
) -> None:
    """Forward CPU time of each named child module, in place; keeps its first inputs."""
    for name in names:
        mod = getattr(model, name)
        start: dict[str, float] = {}

        def pre(_m: Any, inp: Any, name: str = name, start: dict[str, float] = start) -> None:
            if name not in captured and timer.prefix == "":
                captured[name] = tuple(t.detach() if torch.is_tensor(t) else t for t in inp)
            start["f"] = time.process_time()

        def post(
            _m: Any, _i: Any, _o: Any, name: str = name, start: dict[str, float] = start
        ) -> None:
            timer.add(f"forward {name}", time.process_time() - start["f"])

        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)


def isolated_backward(
    model: torch.nn.Module, captured: dict[str, Any], repeats: int = 3
) -> dict[str, float]:
    """Backward CPU seconds of each module alone on the inputs it saw in training.

    Autograd runs a module's backward inside one ``loss.backward()``, so it is timed
    here module by module: forward + backward of the module on its own, minus its forward.
    """
    out: dict[str, float] = {}
    model.train()
    for name, inp in captured.items():
        mod = getattr(model, name)
        fwd = bwd = 0.0
        for _ in range(repeats):
            t = time.process_time()
            res = mod(*inp)
            y = res[0] if isinstance(res, tuple) else res
            t1 = time.process_time()
            y.float().nan_to_num().sum().backward()
            bwd += time.process_time() - t1
            fwd += t1 - t
        model.zero_grad(set_to_none=True)
        out[f"backward {name} (isolated)"] = bwd / repeats
        out[f"forward {name} (isolated)"] = fwd / repeats
    return out


def profile(
    catalog: str, arch: str, steps: int, batch_size: int, response_every: int
) -> dict[str, Any]:
    cfg = replace(T.TrainConfig(), arch=arch, batch_size=batch_size, response_every=response_every)
    setup = T.prepare_pretrain(open_catalog(catalog), cfg, torch.device("cpu"))
    model, norm = setup.model, setup.norm
    timer = Timer()
    captured: dict[str, Any] = {}
    hook_modules(model, MODULES[arch], timer, captured)
    real_resp = losses.response_penalty

    def timed_resp(*a: Any, **k: Any) -> torch.Tensor:
        timer.prefix = "response penalty: "
        t = time.process_time()
        try:
            return real_resp(*a, **k)
        finally:
            timer.prefix = ""
            timer.add("response penalty (total, forwards incl.)", time.process_time() - t)

    losses.response_penalty = timed_resp  # type: ignore[assignment]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    it = iter(setup.train)
    per_step = []
    t_all = time.process_time()
    w_all = time.perf_counter()
    for step in range(steps):
        t0 = time.process_time()
        b = timer.timed("data assembly (Batches)", lambda: next(it))
        loss, _ = timer.timed("grid_loss (forward + loss terms + response)",
                              lambda b=b, step=step: T.grid_loss(model, b, norm, cfg, step))  # fmt: skip
        opt.zero_grad(set_to_none=True)
        timer.timed("backward (total)", loss.backward)
        timer.timed(
            "clip_grad_norm", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        )
        timer.timed("optimizer (Adam)", opt.step)
        per_step.append(time.process_time() - t0)
    cpu = time.process_time() - t_all
    wall = time.perf_counter() - w_all
    losses.response_penalty = real_resp  # type: ignore[assignment]
    model.eval()
    timer.prefix = "not per step: "  # the hooks keep firing below; keep it out of the steps
    t = time.process_time()
    with torch.no_grad():
        for vb in setup.val:
            T.grid_loss(model, vb, norm, cfg, 1)
    val_s = time.process_time() - t
    t = time.process_time()
    copy.deepcopy(model.state_dict())
    copy_s = time.process_time() - t
    iso = isolated_backward(model, captured)
    sec = {k: v for k, v in timer.sec.items() if not k.startswith("not per step: ")}
    fwd = sum(v for k, v in sec.items() if k.startswith("forward "))
    resp_total = sec.get("response penalty (total, forwards incl.)", 0.0)
    sec["loss terms (grid_loss - forwards - response)"] = (
        sec["grid_loss (forward + loss terms + response)"] - fwd - resp_total
    )
    per = {k: v / steps for k, v in sorted(sec.items())}
    return {"arch": arch, "steps": steps, "batch_size": batch_size, "response_every": response_every,
            "window_days": int(setup.train_items[0][1][1] - setup.train_items[0][1][0]),
            "train_batches_per_epoch": len(setup.train), "val_batches": len(setup.val),
            "cpu_s_per_step_mean": cpu / steps, "wall_s_per_step_mean": wall / steps,
            "cpu_s_per_step": per_step, "cpu_s_per_step_by_part": per,
            "isolated_module_cpu_s": iso, "validation_pass_cpu_s": val_s, "deepcopy_state_cpu_s": copy_s,
            "config": T._jsonable(asdict(cfg))}  # fmt: skip


def to_md(res: dict[str, Any]) -> str:
    lines = ["# Pre-training step profile (CPU, one torch thread)", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']['lscpu'][0] if res['machine']['lscpu'] else ''}; "
             f"load before {res['load_before']}, after {res['load_after']}", ""]  # fmt: skip
    for r in res["runs"]:
        lines += [f"## {r['arch']}: batch {r['batch_size']}, window {r['window_days']} days, "
                  f"{r['steps']} steps, response penalty every {r['response_every']} steps", "",
                  f"CPU s/step {r['cpu_s_per_step_mean']:.3f} (wall {r['wall_s_per_step_mean']:.3f}); "
                  f"{r['train_batches_per_epoch']} batches/epoch; validation pass "
                  f"{r['validation_pass_cpu_s']:.2f} CPU s/epoch ({r['val_batches']} batches); "
                  f"best-state deepcopy {r['deepcopy_state_cpu_s'] * 1e3:.1f} ms", "",
                  "| part | CPU s/step | share |", "| --- | --- | --- |"]  # fmt: skip
        tot = r["cpu_s_per_step_mean"]
        for k, v in sorted(r["cpu_s_per_step_by_part"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {k} | {v:.4f} | {100 * v / tot:.1f} % |")
        lines += ["", "Each module alone (forward, then backward of the sum of its output) on the "
                  "inputs it saw in training:", "", "| module part | CPU s |", "| --- | --- |"]  # fmt: skip
        for k, v in sorted(r["isolated_module_cpu_s"].items()):
            lines.append(f"| {k} | {v:.4f} |")
        lines.append("")
    lines.append("Forward rows are per module (hooks); 'grid_loss' contains them. "
                 " Response-penalty rows average over all "
                 "steps (it runs every k-th).")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--response-every", type=int, default=T.TrainConfig().response_every)
    ap.add_argument("--archs", default="kgml,gru")
    ap.add_argument("--out", default="benchmarks/results/train_profile")
    a = ap.parse_args()
    load0 = os.getloadavg()
    with torch_threads(1):
        runs = [profile(a.catalog, arch, a.steps, a.batch_size, a.response_every)
                for arch in a.archs.split(",")]  # fmt: skip
        mach = machine()
    res = {"command": "python benchmarks/train_profile.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()),
           "machine": mach, "load_before": load0, "load_after": os.getloadavg(), "runs": runs}  # fmt: skip
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(to_md(res))
    print(to_md(res))


if __name__ == "__main__":
    main()
