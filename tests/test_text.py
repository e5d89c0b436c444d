"""The JAX sentence encoder (jaxmeta.text).

all-MiniLM-L6-v2 against sentence-transformers' own tokens and vectors (the reference
file tests/data/minilm_reference.json, made by tests/scripts/make_text_reference.py);
a tiny random BERT folder against an independent NumPy forward pass, for every
pooling mode, activation and normalisation; truncation, bucketing and recompilation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="the sentence encoder needs the jaxmeta[text] extra")
pytest.importorskip("safetensors", reason="the sentence encoder needs the jaxmeta[text] extra")

import safetensors.numpy
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from jaxmeta.text import SentenceEncoder, load_encoder, packaged_model_folder
from jaxmeta.text.bert import BertConfig, init_params
from jaxmeta.text.encoder import _forward

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


# --------------------------------------------------------------------------- all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    try:
        folder = packaged_model_folder("all-MiniLM-L6-v2")
    except ImportError as err:
        pytest.skip(str(err))
    return SentenceEncoder.from_folder(folder)


@pytest.fixture(scope="module")
def reference() -> dict:
    data = json.loads(REFERENCE.read_text(encoding="utf-8"))
    for row in data["sentences"]:
        row["vector"] = np.frombuffer(base64.b64decode(row["vector"]), "<f4")
    return data


def test_minilm_matches_sentence_transformers(minilm, reference):
    """Same tokens (truncation at 256 included) and vectors with cosine >= 0.999 on
    every reference sentence: empty, blank, accented, CJK, Arabic, emoji, over-long."""
    rows = reference["sentences"]
    header = reference["header"]
    weights = packaged_model_folder() / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == header["weights_sha256"], "another model's reference"
    texts = [r["text"] for r in rows]
    assert len(texts) >= 20 and "" in texts
    assert any(any(ord(c) > 0x3000 for c in t) for t in texts) and any("é" in t for t in texts)
    truncated = [r for r in rows if len(r["input_ids"]) == header["max_seq_length"]]
    assert len(truncated) >= 3 and minilm.max_length == header["max_seq_length"] == 256

    tokens = minilm.tokenize(texts)
    for row, ids in zip(rows, tokens):
        assert ids == row["input_ids"], row["text"][:60]

    vectors = minilm.encode(texts)
    ref = np.stack([r["vector"] for r in rows])
    cosine = np.sum(vectors * ref, axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(ref, axis=1)
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
    assert cosine.min() >= 0.999, [(t[:40], c) for t, c in zip(texts, cosine) if c < 0.999]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # the Normalize module


def test_minilm_bucketing_changes_no_vector_and_does_not_recompile(minilm, reference):
    texts = [r["text"] for r in reference["sentences"]][:8]  # short ones: the padded run stays cheap
    bucketed = minilm.encode(texts)
    compiled = _forward._cache_size()
    again = minilm.encode(texts)
    assert _forward._cache_size() == compiled, "a second call with the same shapes recompiled"
    np.testing.assert_array_equal(again, bucketed)
    padded = minilm.encode(texts, batch_size=3, bucketed=False)  # at 256 tokens, not 8 to 32, 3 rows a batch
    np.testing.assert_allclose(padded, bucketed, atol=2e-6)


def test_load_encoder_finds_the_packaged_model_by_name(minilm):
    assert packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2") == packaged_model_folder()
    with pytest.raises(FileNotFoundError, match="neither a folder nor a packaged model"):
        load_encoder("no-such-model")
    with pytest.raises(ValueError, match="no packaged model"):
        packaged_model_folder("no-such-model")


# --------------------------------------------------------------------------- a tiny BERT folder

WORDS = ["the", "toy", "story", "a", "man", "is", "eating", "food", "genres", "comedy", "drama", "cafe", "plot",
         "##s", "##ing", "1995", ".", ",", "(", ")", ":", "東", "京"]
CONFIG = BertConfig(vocab_size=5 + len(WORDS), hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=16, max_position_embeddings=32, type_vocab_size=2, layer_norm_eps=1e-12)
MAX_SEQ = 12
TEXTS = ["Toy Story (1995).", "", "a man is eating food", "Café 東京, plot: comedy drama",
         "the toys " * 20, "unknownword", "   ", "genres: comedy, drama, the story of a man eating the food"]


def hf_tensors(params: dict) -> dict[str, np.ndarray]:
    """``params`` under BertModel's state-dict names (linear weights [out, in])."""
    out = {"embeddings.position_ids": np.arange(CONFIG.max_position_embeddings)[None, :]}
    emb = params["embeddings"]
    for name, key in (("word_embeddings", "token"), ("position_embeddings", "position"),
                      ("token_type_embeddings", "type")):
        out[f"embeddings.{name}.weight"] = emb[key]
    out["embeddings.LayerNorm.weight"], out["embeddings.LayerNorm.bias"] = emb["norm"]["scale"], emb["norm"]["bias"]
    names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_out": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense",
             "attention_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}
    for n, layer in enumerate(params["layers"]):
        for key, name in names.items():
            at = f"encoder.layer.{n}.{name}"
            if "norm" in key:
                out[at + ".weight"], out[at + ".bias"] = layer[key]["scale"], layer[key]["bias"]
            else:
                out[at + ".weight"], out[at + ".bias"] = np.ascontiguousarray(layer[key]["w"].T), layer[key]["b"]
    out["pooler.dense.weight"] = np.zeros((8, 8), np.float32)
    out["pooler.dense.bias"] = np.zeros(8, np.float32)
    return out


def make_folder(root: Path, *, pooling: dict, normalize: bool, act: str = "gelu", seed: int = 0) -> Path:
    """A sentence-transformers folder of a random 2-layer BERT with a 28-token vocabulary."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(root / "tokenizer.json"))
    config = dict(CONFIG._asdict(), hidden_act=act, model_type="bert", architectures=["BertModel"])
    (root / "config.json").write_text(json.dumps(config))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ, "do_lower_case": False}))
    safetensors.numpy.save_file(hf_tensors(init_params(CONFIG._replace(hidden_act=act), seed=seed)),
                                str(root / "model.safetensors"))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, **pooling}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (root / "modules.json").write_text(json.dumps(modules))
    return root


def np_forward(tensors: dict, ids: list[int], act: str) -> np.ndarray:
    """BERT in float64 NumPy, one sequence, no padding, a loop over heads: the reference."""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    gelu = np.vectorize(lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))))
    acts = {"gelu": gelu, "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
            "relu": lambda x: np.maximum(x, 0.0), "silu": lambda x: x / (1 + np.exp(-x))}

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + CONFIG.layer_norm_eps) * t[name + ".weight"] + t[name + ".bias"]

    def linear(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    n = len(ids)
    h = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:n]
    h = norm(h + t["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    d = CONFIG.hidden_size // CONFIG.num_attention_heads
    for layer in range(CONFIG.num_hidden_layers):
        at = f"encoder.layer.{layer}."
        q, k, v = (linear(h, at + f"attention.self.{m}") for m in ("query", "key", "value"))
        heads = []
        for j in range(CONFIG.num_attention_heads):
            s = q[:, j * d:(j + 1) * d] @ k[:, j * d:(j + 1) * d].T / math.sqrt(d)
            p = np.exp(s - s.max(-1, keepdims=True))
            heads.append((p / p.sum(-1, keepdims=True)) @ v[:, j * d:(j + 1) * d])
        h = norm(linear(np.concatenate(heads, -1), at + "attention.output.dense") + h, at + "attention.output.LayerNorm")
        inner = acts[act](linear(h, at + "intermediate.dense"))
        h = norm(linear(inner, at + "output.dense") + h, at + "output.LayerNorm")
    return h


def np_pool(h: np.ndarray, mode: str) -> np.ndarray:
    n = len(h)
    return {"cls": h[0], "max": h.max(0), "mean": h.mean(0), "mean_sqrt_len_tokens": h.sum(0) / math.sqrt(n),
            "weightedmean": (np.arange(1, n + 1)[:, None] * h).sum(0) / (n * (n + 1) / 2), "lasttoken": h[-1]}[mode]


POOLINGS = [
    ({"pooling_mode_mean_tokens": True}, ("mean",), True, "gelu"),
    ({"pooling_mode_cls_token": True}, ("cls",), False, "gelu_new"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, ("max", "mean"), False, "relu"),
    ({"pooling_mode": "mean_sqrt_len_tokens"}, ("mean_sqrt_len_tokens",), True, "gelu"),
    ({"pooling_mode": ["lasttoken", "weightedmean"]}, ("weightedmean", "lasttoken"), False, "silu"),
]


@pytest.mark.parametrize("pooling, modes, normalize, act", POOLINGS)
def test_tiny_folder_matches_numpy(tmp_path, pooling, modes, normalize, act):
    folder = make_folder(tmp_path / "tiny", pooling=pooling, normalize=normalize, act=act)
    encoder = load_encoder(folder)
    assert encoder.pooling == modes and encoder.normalize == normalize and encoder.dim == 8 * len(modes)
    tensors = safetensors.numpy.load_file(str(folder / "model.safetensors"))
    expected = []
    for ids in encoder.tokenize(TEXTS):
        h = np_forward(tensors, ids, act)
        v = np.concatenate([np_pool(h, m) for m in modes])
        expected.append(v / np.linalg.norm(v) if normalize else v)
    # batches of 3: several per bucket, the last padded with empty rows
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=3), np.stack(expected), rtol=1e-4, atol=1e-5)


def test_tiny_folder_truncates_like_transformers(tmp_path):
    """Long texts keep [CLS], their first max_seq_length - 2 tokens and [SEP]."""
    folder = make_folder(tmp_path / "tiny", pooling={"pooling_mode_mean_tokens": True}, normalize=True)
    encoder = load_encoder(folder)
    full = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text, ids in zip(TEXTS, encoder.tokenize(TEXTS)):
        whole = full.encode(text).ids
        assert ids == (whole if len(whole) <= MAX_SEQ else whole[: MAX_SEQ - 1] + [whole[-1]]), text
    assert max(map(len, encoder.tokenize(TEXTS))) == MAX_SEQ
    assert encoder.tokenize([""]) == [[2, 3]] and encoder.tokenize(["東京"]) == [[2, 26, 27, 3]]
    shorter = load_encoder(folder, max_length=6)
    assert shorter.max_length == 6 and max(map(len, shorter.tokenize(TEXTS))) == 6
    assert shorter.fingerprint != encoder.fingerprint  # the cut changes vectors, so the cache key


def test_encode_edge_cases(tmp_path):
    encoder = load_encoder(make_folder(tmp_path / "tiny", pooling={"pooling_mode_mean_tokens": True}, normalize=True))
    assert encoder.encode([]).shape == (0, 8)
    one = encoder.encode(["a man"])
    np.testing.assert_allclose(encoder.encode(["food", "a man", "the story"])[1], one[0], atol=1e-6)
    with pytest.raises(TypeError, match="pass a list of strings"):
        encoder.encode("a man")
    with pytest.raises(TypeError, match="text 1 is None"):
        encoder.encode(["a", None])
    with pytest.raises(ValueError, match="batch_size=0"):
        encoder.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="batch_tokens=0"):
        encoder.encode(["a"], batch_tokens=0)


@pytest.mark.parametrize("change, error, match", [
    (lambda f: (f / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer", "path": ""},
                                                          {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
                                                          {"type": "sentence_transformers.models.Dense", "path": "2_Dense"}])),
     ValueError, "Transformer, Pooling and an optional Normalize"),
    (lambda f: (f / "config.json").write_text(json.dumps(dict(CONFIG._asdict(), model_type="roberta"))),
     ValueError, "model_type='roberta'"),
    (lambda f: (f / "config.json").write_text(json.dumps(dict(CONFIG._asdict(), hidden_act="tanh"))),
     ValueError, "hidden_act='tanh'"),
    (lambda f: (f / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"})),
     ValueError, "pooling mode"),
    (lambda f: (f / "model.safetensors").unlink(), FileNotFoundError, "model.safetensors"),
    (lambda f: (f / "config.json").write_text(json.dumps(dict(CONFIG._asdict(), intermediate_size=12))),
     ValueError, "has shape \\(16, 8\\), but config.json implies \\(12, 8\\)"),
])
def test_bad_folders_raise_clear_errors(tmp_path, change, error, match):
    folder = make_folder(tmp_path / "tiny", pooling={"pooling_mode_mean_tokens": True}, normalize=True)
    change(folder)
    with pytest.raises(error, match=match):
        load_encoder(folder)


def test_new_items_get_their_vectors_from_text_alone(tmp_path):
    """Tiny encoder -> cached item vectors -> FeatureEncoder -> MeLU; an item the
    encoder was not fitted on is encoded from its title and genres."""
    import jax
    import pandas as pd

    from jaxmeta.data.features import FeatureEncoder
    from jaxmeta.data.text_features import add_text_vectors, item_text
    from jaxmeta.models import melu

    encoder = load_encoder(make_folder(tmp_path / "tiny", pooling={"pooling_mode_mean_tokens": True}, normalize=True))
    users = pd.DataFrame({"user": [1], "age": [25]})
    items = pd.DataFrame({"item": [1, 2], "title": ["Toy Story (1995)", "Story, The (1995)"],
                          "genres": [("Comedy",), ("Drama",)]})
    fitted = FeatureEncoder.fit(users, add_text_vectors(items, encoder, cache_dir=tmp_path / "cache"),
                                user_categorical=["age"], item_vector=["text_vector"])
    new = pd.DataFrame({"item": [3], "title": ["A Man Eating Food (2024)"], "genres": [("Comedy", "Drama")]})
    every = add_text_vectors(pd.concat([items, new], ignore_index=True), encoder, cache_dir=tmp_path / "cache")
    x = FeatureEncoder.from_dict(fitted.to_dict(), users=users, items=every).encode([(1, 3), (1, 2)])
    text = item_text("A Man Eating Food (2024)", genres=("Comedy", "Drama"))
    np.testing.assert_allclose(x["text_vector"], encoder.encode([text, "The Story (1995). Genres: Drama."]), atol=1e-6)
    model = melu(fitted.spec, embed_dim=4, hidden=(8,))
    assert np.isfinite(np.asarray(model.apply(model.init(jax.random.key(0)), x))).all()
