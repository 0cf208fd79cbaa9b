#!/usr/bin/env python3
"""The comparison table of scripts/interp-recipe (docs/interp.md): probing
accuracy, monosemanticity and auto-interp scores per encoder, each a mean with
its 95 % interval, from the JSON files the recipe wrote into OUT.

Usage: python3 scripts/interp_table.py OUT > OUT/report.md
"""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2-l15/interp"
# (row label, probe file, probe encoder label, autointerp folder, autointerp encoder)
rows = [
    ("ReLU SAE", "probe-sae.json", "relu-l1-0.5/sae", "autointerp-relu-l1-0.5", "sae"),
    ("MLP encoder", "probe-sae.json", "mlp-l1-0.5/sae", "autointerp-mlp-l1-0.5", "sae"),
    ("TopK SAE", "probe-sae.json", "topk32/sae", "autointerp-topk32", "sae"),
    ("FISTA on TopK's decoder", "probe-fista.json", "topk32/fista", "autointerp-topk32", "fista"),
]


def ci(c):
    if c is None or c.get("mean") is None:
        return "–"
    return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def load(path):
    try:
        with open(os.path.join(out, path)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


print("| encoder | L0 (Brown) | probe acc. k=1 | k=2 | k=5 | token mono. | POS mono. "
      "| features judged | detection AUROC | fuzzing AUROC | detection bal. acc. |")
print("|---|---:|---|---|---|---|---|---:|---|---|---|")
for label, probe_file, probe_enc, ai_dir, ai_enc in rows:
    probe = load(probe_file)
    p = next((e for e in (probe or {}).get("encoders", []) if e["encoder"] == probe_enc), None)
    summary = load(os.path.join(ai_dir, "summary.json"))
    a = (summary or {}).get("encoders", {}).get(ai_enc)
    cells = [label]
    if p:
        accs = p["test_accuracy_ci95_by_k"]
        mono = p["monosemanticity"]
        cells += [f"{p['test_l0']:.1f}"] + [ci(accs.get(k)) for k in ("1", "2", "5")]
        cells += [f"{ci(mono['token']['ci95'])} ({mono['token']['scored_latents']})", ci(mono["pos"]["ci95"])]
    else:
        cells += ["–"] * 6
    if a:
        cells += [str(a["features"]), ci(a["detection"]["auroc"]), ci(a["fuzzing"]["auroc"]),
                  ci(a["detection"]["balanced_accuracy"])]
    else:
        cells += ["–"] * 4
    print("| " + " | ".join(cells) + " |")
judge = next((load(os.path.join(r[3], "summary.json")) for r in rows if load(os.path.join(r[3], "summary.json"))), None)
if judge:
    print(f"\nJudge: `{judge['judge']}`; options: `{json.dumps(judge['options'])}`.")
