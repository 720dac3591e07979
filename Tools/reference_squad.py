#!/usr/bin/env python3
"""Expected SQuAD normalisation / EM / F1 values for EvaluationTests (Fixtures/rag/squad_cases.json).

A re-implementation of the functions of the official SQuAD v1.1 evaluation script (normalize_answer,
f1_score, exact_match_score, metric_max_over_ground_truths), written from its documented behaviour:
lower -> remove string.punctuation -> regex \\b(a|an|the)\\b -> ' ' -> ' '.join(split()).
Cases mix hand-written adversarial strings with predictions/golds drawn from the shipped SQuAD v2 dev subset.
Usage: python3 Tools/reference_squad.py   (from the repository root)
"""
import collections, json, os, random, re, string, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def normalize_answer(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction, ground_truth):
    p, g = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction, ground_truth):
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max(fn, prediction, golds):
    return max(fn(prediction, g) for g in golds) if golds else 0.0


HAND = [
    ("The Eiffel Tower", ["Eiffel Tower"]),
    ("the the the", ["the"]),
    ("an apple a day", ["apple day"]),
    ("theater", ["the ater"]),
    ("A", ["a"]),
    ("Anne and the ant", ["anne ant"]),
    ("U.S.A.", ["USA"]),
    ("rock-n-roll", ["rocknroll", "rock n roll"]),
    ("  10th   and\t11th\ncenturies ", ["10th and 11th centuries"]),
    ("Denmark, Iceland and Norway", ["Denmark, Iceland and Norway", "Norway"]),
    ("", ["France"]),
    ("France", [""]),
    ("", [""]),
    ("Café au lait", ["cafe au lait", "Café au Lait"]),
    ("ÉCOLE normale", ["école normale"]),
    ("the_the a_b", ["the_the a_b"]),
    ("l'a the'n", ["la then"]),
    ("«the» “an” quote", ["« » “ ” quote"]),
    ("1,000,000 dollars", ["1000000 dollars"]),
    ("naïve the\u00a0end", ["naïve end"]),
    ("x the\u3000y", ["x y"]),
    ("an\u2003the a\u0301", ["á"]),
    ("Москва the город", ["москва город"]),
    ("東京 the 大阪", ["東京 大阪"]),
    ("apple apple banana", ["apple banana banana"]),
    ("one two three four", ["two four six"]),
    ("Rollo", ["Rollo", "Rollo", "Rollo"]),
    ("in the 10th century", ["10th century", "the 10th"]),
    ("$5.00 (approx.)", ["5.00 approx", "500 approx"]),
    ("AN", ["an"]),
]


def main():
    data = json.loads(subprocess.run(["zstd", "-dc", os.path.join(ROOT, "Corpora/squad/squad-v2-dev-first5.json.zst")],
                                     check=True, capture_output=True).stdout)
    rng = random.Random(7)
    qas = [(qa, p["context"]) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"] if qa["answers"]]
    cases = list(HAND)
    for qa, ctx in rng.sample(qas, 60):
        golds = [x["text"] for x in qa["answers"]]
        # predictions: a gold answer, a widened span of the context, and a random span
        st = qa["answers"][0]["answer_start"]
        cases.append((golds[-1], golds))
        cases.append((ctx[max(0, st - rng.randrange(0, 20)): st + len(golds[0]) + rng.randrange(0, 20)], golds))
        a = rng.randrange(0, max(1, len(ctx) - 40))
        cases.append((ctx[a:a + rng.randrange(1, 40)], golds))
    out = [{"prediction": p, "golds": g, "normalized": normalize_answer(p),
            "em": metric_max(exact_match_score, p, g), "f1": metric_max(f1_score, p, g)} for p, g in cases]
    path = os.path.join(ROOT, "Tests/EvaluationTests/Fixtures/rag/squad_cases.json")
    json.dump({"generator": "Tools/reference_squad.py", "cases": out}, open(path, "w"), ensure_ascii=False, indent=0)
    print(len(out), "cases;", sum(c["em"] for c in out), "exact")


if __name__ == "__main__":
    main()
