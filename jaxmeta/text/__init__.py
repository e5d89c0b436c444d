"""Text features: a JAX sentence encoder loaded from a sentence-transformers folder.

Needs the ``jaxmeta[text]`` extra (``tokenizers``, ``safetensors``) only when a
model is loaded; importing this package does not.
"""

from jaxmeta.text import bert as bert
from jaxmeta.text.encoder import PACKAGED as PACKAGED
from jaxmeta.text.encoder import SentenceEncoder as SentenceEncoder
from jaxmeta.text.encoder import load_encoder as load_encoder
from jaxmeta.text.encoder import packaged_model_folder as packaged_model_folder
from jaxmeta.text.encoder import sentence_embeddings as sentence_embeddings

__all__ = (
    "PACKAGED",
    "SentenceEncoder",
    "bert",
    "load_encoder",
    "packaged_model_folder",
    "sentence_embeddings",
)
