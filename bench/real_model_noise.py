"""What the grid noise of real:smollm2 costs: perplexity of both versions with the fp32 numpy oracle.

    python bench/real_model_noise.py                  # the eval default: first 2048 tokens, 512-token windows
    python bench/real_model_noise.py --tokens 0       # the whole evaluation text

Three models, all run by phi_quant.reference on exactly the same windows of the evaluation text:

- real:smollm2-grid, the GGUF's exact dequantized values (float32);
- the same values rounded to bf16, to separate what bf16 storage costs from what the noise costs;
- real:smollm2, grid + uniform noise of one grid cell per block, stored as bf16.

Prints a Markdown table with the text's path and sha256, and the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    from phi_quant.builtin import smollm2
    from phi_quant.fidelity import text_windows, windowed_nll
    from phi_quant.model.source import open_model
    from phi_quant.quant.reference import decode, f32_to_bf16_bits
    from phi_quant.reference import ReferenceModel
    from phi_quant.texts import evaluation_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of the evaluation text to score (0: all)")
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()

    text = evaluation_text()
    t0 = time.perf_counter()
    grid_dir, noisy_dir = smollm2.cached_checkpoint("smollm2-grid"), smollm2.cached_checkpoint("smollm2")
    build_s = time.perf_counter() - t0
    rows = []
    with open_model(grid_dir) as grid, open_model(noisy_dir) as noisy:
        ids = grid.hf_tokenizer().encode(text.text, add_special_tokens=False).ids
        ids = ids[: args.tokens] if args.tokens else ids
        windows = text_windows(ids, args.window)
        ref = ReferenceModel.from_source(grid)
        models = [("real:smollm2-grid (float32, on the Q4_1/Q8_0 grid)", ref)]
        bf16 = {k: decode(f32_to_bf16_bits(v), "bf16") for k, v in ref.w.items()}
        models.append(("grid values rounded to bf16 (no noise)", ReferenceModel(grid.config, bf16)))
        models.append(("real:smollm2 (grid + U(-d/2, d/2) per block, bf16)", ReferenceModel.from_source(noisy)))
        for label, model in models:
            t1 = time.perf_counter()
            nll = windowed_nll(model.logits, windows)
            rows.append((label, float(np.exp(nll.mean())), nll, time.perf_counter() - t1))
    base = rows[0][2]
    print(f"evaluation text: {text.files[0][0]} (sha256 {text.sha256}); {len(ids)} tokens in {len(windows)} "
          f"window(s) of {args.window}, {base.size} scored; load average {os.getloadavg()[0]:.2f}; "
          f"build/cache lookup {build_s:.1f} s\n")
    print("| model | perplexity | Δppl vs grid | mean ΔNLL (nats) | oracle seconds |")
    print("|---|---|---|---|---|")
    for label, ppl, nll, secs in rows:
        print(f"| {label} | {ppl:.3f} | {ppl - rows[0][1]:+.3f} | {float((nll - base).mean()):+.4f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
