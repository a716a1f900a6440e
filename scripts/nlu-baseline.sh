#!/usr/bin/env bash
# The built-in classifier beside a scikit-learn baseline, on the same data:
# the intents' examples of a flow (training) and held-out phrasings (scored).
# The baseline: TF-IDF over character 2-5-grams (within words) and words,
# logistic regression; "not sure" below a probability threshold, reported at
# its best threshold. flowbot's figure is at its default threshold.
#   scripts/nlu-baseline.sh [FLOW] [DATA]
# (default: flows/support.yaml tests/nlu/support_eval.yaml). scikit-learn is
# installed into target/nlu-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
flow=${1:-flows/support.yaml}
data=${2:-tests/nlu/support_eval.yaml}
venv=target/nlu-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check scikit-learn pyyaml
fi
"$venv/bin/python" - "$flow" "$data" <<'PY'
import sys, yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union

flow = yaml.safe_load(open(sys.argv[1]))
cases = yaml.safe_load(open(sys.argv[2]))
texts, labels = [], []
for name, intent in flow["nlu"]["intents"].items():
    ex = intent["examples"]
    for e in (ex if isinstance(ex, list) else [x for l in ex.values() for x in l]):
        texts.append(e)
        labels.append(name)
feats = make_union(
    TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=True, strip_accents="unicode", sublinear_tf=True),
    TfidfVectorizer(analyzer="word", lowercase=True, strip_accents="unicode", sublinear_tf=True),
)
model = make_pipeline(feats, LogisticRegression(C=10, max_iter=2000))
model.fit(texts, labels)
probs = model.predict_proba([c["text"] for c in cases])
classes = list(model.classes_)
best = (0.0, 0.0)
for k in range(0, 100):
    t = k / 100
    right = 0
    for c, p in zip(cases, probs):
        i = max(range(len(p)), key=lambda j: p[j])
        got = classes[i] if p[i] >= t else None
        right += got == c.get("intent")
    acc = right / len(cases)
    if acc > best[0]:
        best = (acc, t)
print(f"scikit-learn baseline: {best[0]*100:.1f}% at its best threshold ({best[1]:.2f}), {len(cases)} phrasings")
PY
cargo run -q --release -- nlu eval "$flow" "$data" | sed -n "1s/^/flowbot built-in:      /p"
