#!/usr/bin/env python3
"""Generates the retrieval-metric fixtures for EvaluationTests (Fixtures/rag/).

Two TREC run files over the BEIR SciFact test qrels (a random run and a tie-heavy run whose scores are
rounded to a few distinct values, so the trec_eval tie rule decides the order), plus the expected metrics from
two independent implementations that must agree with each other before anything is written:
  * pytrec_eval (pip install pytrec-eval-terrier), the trec_eval C code BEIR uses, for nDCG@k and recall@k;
  * a plain-Python implementation of trec_eval semantics written from SPECS.md, which also gives MRR@10
    (BEIR computes MRR itself; pytrec_eval's recip_rank has no cut-off).
Usage: python3 Tools/reference_trec_eval.py   (from the repository root)
"""
import json, math, os, random, subprocess, sys

import pytrec_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests/EvaluationTests/Fixtures/rag")
NDCG = [1, 3, 5, 10, 100]
RECALL = [10, 100]


def zcat(path):
    return subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout.decode("utf-8")


def load_qrels():
    qrels = {}
    for i, line in enumerate(zcat(os.path.join(ROOT, "Corpora/scifact/qrels/test.tsv.zst")).splitlines()):
        if i == 0 or not line.strip():
            continue
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    return qrels


def doc_ids():
    return [json.loads(l)["_id"] for l in zcat(os.path.join(ROOT, "Corpora/scifact/corpus.jsonl.zst")).splitlines() if l.strip()]


def trec_order(docs):
    # score descending, then doc id descending byte-wise (trec_eval's qsort comparator)
    by_id = sorted(docs.items(), key=lambda kv: kv[0].encode(), reverse=True)
    return sorted(by_id, key=lambda kv: -kv[1])  # stable: ties keep the id order


def own_metrics(qrels, run):
    out = {}
    for q, judged in qrels.items():
        ranked = [d for d, _ in trec_order(run.get(q, {}))]
        ideal = sorted([r for r in judged.values() if r > 0], reverse=True)
        m = {}
        for k in NDCG:
            dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if judged.get(d, 0) > 0)
            idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal[:k]))
            m[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        for k in RECALL:
            hits = sum(1 for d in ranked[:k] if judged.get(d, 0) > 0)
            m[f"recall@{k}"] = hits / len(ideal) if ideal else 0.0
        rr = 0.0
        for i, d in enumerate(ranked[:10]):
            if judged.get(d, 0) > 0:
                rr = 1.0 / (i + 1)
                break
        m["mrr@10"] = rr
        out[q] = m
    return out


def pytrec_metrics(qrels, run):
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut." + ",".join(map(str, NDCG)), "recall." + ",".join(map(str, RECALL))})
    res = ev.evaluate(run)
    out = {}
    for q in qrels:
        r = res.get(q)
        m = {}
        for k in NDCG:
            m[f"ndcg@{k}"] = r[f"ndcg_cut_{k}"] if r else 0.0
        for k in RECALL:
            m[f"recall@{k}"] = r[f"recall_{k}"] if r else 0.0
        out[q] = m
    return out


def make_runs(qrels, ids):
    rng = random.Random(1234)
    random_run, tie_run = {}, {}
    queries = sorted(qrels)
    for qi, q in enumerate(queries):
        cand = rng.sample(ids, 150)
        # plant relevant documents at random depths in about two thirds of the queries
        for d in qrels[q]:
            if rng.random() < 0.67:
                cand[rng.randrange(0, 120)] = d
        cand = list(dict.fromkeys(cand))
        random_run[q] = {d: round(rng.uniform(-1, 1), 6) for d in cand}
        # tie-heavy: 4 distinct scores, so order inside a score level is the doc-id rule
        tie_run[q] = {d: float(rng.choice([0.25, 0.5, 0.75, 1.0])) for d in cand}
    # a query with no retrieved documents (kept in qrels: scored 0)
    random_run.pop(queries[-1]); tie_run.pop(queries[-1])
    return random_run, tie_run


def write_run(path, run, tag):
    lines = []
    for q in sorted(run):
        for rank, (d, s) in enumerate(trec_order(run[q]), 1):
            lines.append(f"{q} Q0 {d} {rank} {s!r} {tag}")
    open(path, "w").write("\n".join(lines) + "\n")


def main():
    qrels = load_qrels()
    # one query whose only judgement is 0 (no positives), as trec_eval sees them
    qrels["zz-nopos"] = {"4983": 0}
    ids = doc_ids()
    random_run, tie_run = make_runs(qrels, ids)
    expected = {}
    for name, run in [("random", random_run), ("ties", tie_run)]:
        mine, ref = own_metrics(qrels, run), pytrec_metrics(qrels, run)
        worst = max(abs(mine[q][k] - ref[q][k]) for q in qrels for k in ref[q])
        if worst > 1e-12:
            sys.exit(f"{name}: own implementation and pytrec_eval disagree by {worst}")
        for q in qrels:
            # pytrec_eval values where it has them, own implementation for mrr@10
            mine[q].update(ref[q])
        mean = {k: sum(mine[q][k] for q in qrels) / len(qrels) for k in mine[next(iter(qrels))]}
        expected[name] = {"mean": mean, "per_query": mine}
        write_run(os.path.join(OUT, f"run_{name}.trec"), run, name)
        subprocess.run(["zstd", "-q", "-f", "-19", "--rm", os.path.join(OUT, f"run_{name}.trec")], check=True)
        print(name, {k: round(v, 4) for k, v in mean.items()})
    with open(os.path.join(OUT, "qrels_test_extra.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in sorted(qrels):
            for d, r in sorted(qrels[q].items()):
                f.write(f"{q}\t{d}\t{r}\n")
    json.dump({"generator": "Tools/reference_trec_eval.py (pytrec_eval " + getattr(pytrec_eval, "__version__", "?") + ")",
               "runs": expected}, open(os.path.join(OUT, "trec_expected.json"), "w"), indent=0, sort_keys=True)


if __name__ == "__main__":
    main()
