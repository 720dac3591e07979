#!/usr/bin/env python3
"""Independent reference for QuantKit's paired bootstrap (Sources/Evaluation/Bootstrap.swift).

Writes Tests/EvaluationTests/Fixtures/compare/bootstrap_reference.json: synthetic per-chunk NLL sums and per-query
nDCG values, and the 95% percentile intervals computed here with numpy from the same SplitMix64 resamples
(exact agreement expected, 1e-9), plus scipy.stats.bootstrap's percentile interval on the query data (its own
random resamples: statistical agreement expected within a stated tolerance).
Run: python3 Tools/reference_bootstrap.py
"""
import json, os
import numpy as np
from scipy import stats

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def resample_indices(n, resamples, seed):
    rng = SplitMix64(seed)
    return np.array([[rng.next() % n for _ in range(n)] for _ in range(resamples)], dtype=np.int64)


def write_compare_fixtures(folder, base_nll, quant_nll, count):
    """Perplexity results in the shape `quantkit perplexity --json` writes, for the compare tests: a float
    baseline and a GPTQ INT4 run with per-chunk NLL sums (so the CI can be bootstrapped), and INT8 / RTN INT4
    runs without them."""
    n = len(base_nll)
    common = {"schema_version": 1, "kind": "perplexity", "protocol": "llamacpp", "ctx": 128, "stride": None,
              "tokens_scored": n * count, "corpus_sha256": "4f3e427e" + "0" * 56, "tokenizer": "tok512.model",
              "timings": {"total_s": 1.0}}
    base_ppl = float(np.exp(base_nll.sum() / (n * count)))
    runs = {
        "ppl_f32.json": dict(common, model={"path": "Models/stories260K", "dtype": "f32", "bits_per_weight": 32.0},
                             chunks=[{"nll_sum": float(x), "count": count} for x in base_nll], ppl=base_ppl, ppl_error=0.05),
        "ppl_gptq_int4.json": dict(common, model={"path": "out/stories260K-gptq-int4", "bits_per_weight": 4.5,
                                                  "quantization": {"method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}},
                                   chunks=[{"nll_sum": float(x), "count": count} for x in quant_nll],
                                   ppl=float(np.exp(quant_nll.sum() / (n * count))), ppl_error=0.05,
                                   kld={"mean": 0.0123, "stderr": 0.0004, "max": 0.9, "same_top": 96.5, "rms_dp": 0.02}),
        "ppl_int8.json": dict(common, chunks=n, model={"path": "out/stories260K-rtn-int8", "bits_per_weight": 8.25,
                                                       "quantization": {"method": "rtn", "bits": 8, "group_size": -1}},
                              ppl=base_ppl * 1.004, ppl_error=0.05, kld_mean=0.0011, same_top=99.2),
        "ppl_rtn_int4.json": dict(common, chunks=n, model={"path": "out/stories260K-rtn-int4", "bits_per_weight": 4.5,
                                                           "quantization": {"method": "rtn", "bits": 4, "group_size": 128}},
                                  ppl=base_ppl * 1.05, ppl_error=0.05, kld_mean=0.051, same_top=90.1),
    }
    for name, obj in runs.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(obj, f, indent=1)


def main():
    gen = np.random.default_rng(7)
    n_chunks, count = 40, 63
    base_nll = gen.normal(2.0, 0.3, n_chunks) * count
    quant_nll = base_nll + gen.normal(0.02, 0.03, n_chunks) * count
    n_q = 50
    base_ndcg = np.clip(gen.uniform(0.2, 1.0, n_q), 0, 1)
    quant_ndcg = np.clip(base_ndcg - gen.normal(0.02, 0.05, n_q), 0, 1)
    seed, resamples, level = 12345, 500, 0.95
    a = (1 - level) / 2

    idx = resample_indices(n_chunks, resamples, seed)
    sb = base_nll[idx].sum(axis=1)
    sq = quant_nll[idx].sum(axis=1)
    qe = np.exp((sq - sb) / (count * n_chunks)) - 1
    qerror_est = float(np.exp((quant_nll.sum() - base_nll.sum()) / (count * n_chunks)) - 1)

    idq = resample_indices(n_q, resamples, seed)
    b = base_ndcg[idq].sum(axis=1)
    q = quant_ndcg[idq].sum(axis=1)
    drop = (b - q) / b
    drop_est = float((base_ndcg.sum() - quant_ndcg.sum()) / base_ndcg.sum())
    delta = (quant_ndcg[idq] - base_ndcg[idq]).mean(axis=1)

    # scipy's own resampling (paired), percentile method, many resamples.
    res = stats.bootstrap((base_ndcg, quant_ndcg), lambda x, y: (x.sum() - y.sum()) / x.sum(), paired=True,
                          vectorized=False, n_resamples=4000, confidence_level=level, method="percentile",
                          random_state=np.random.default_rng(1))

    out = {
        "seed": seed, "resamples": resamples, "level": level,
        "chunks": [{"nll_sum": float(x), "count": count} for x in base_nll],
        "chunks_quantized": [{"nll_sum": float(x), "count": count} for x in quant_nll],
        "qerror": {"estimate": qerror_est, "lower": float(np.percentile(qe, 100 * a)), "upper": float(np.percentile(qe, 100 * (1 - a)))},
        "first_indices": idx[0, :10].tolist(),
        "ndcg_base": base_ndcg.tolist(), "ndcg_quantized": quant_ndcg.tolist(),
        "drop": {"estimate": drop_est, "lower": float(np.percentile(drop, 100 * a)), "upper": float(np.percentile(drop, 100 * (1 - a)))},
        "mean_delta": {"estimate": float((quant_ndcg - base_ndcg).mean()), "lower": float(np.percentile(delta, 100 * a)), "upper": float(np.percentile(delta, 100 * (1 - a)))},
        "scipy_drop": {"lower": float(res.confidence_interval.low), "upper": float(res.confidence_interval.high)},
    }
    path = os.path.join(os.path.dirname(__file__), "..", "Tests", "EvaluationTests", "Fixtures", "compare", "bootstrap_reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    write_compare_fixtures(os.path.dirname(path), base_nll, quant_nll, count)
    print("wrote", os.path.normpath(path), out["qerror"], out["drop"], out["scipy_drop"])


if __name__ == "__main__":
    main()
