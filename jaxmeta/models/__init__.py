"""Models: pure ``init``/``apply`` pairs with a fast/slow parameter split."""

from jaxmeta.models._model import Model as Model
from jaxmeta.models._model import Stage as Stage
from jaxmeta.models._model import combine as combine
from jaxmeta.models._model import mask_where as mask_where
from jaxmeta.models._model import partition as partition
from jaxmeta.models._model import path_names as path_names
from jaxmeta.models.flax_bridge import from_linen as from_linen
from jaxmeta.models.flax_bridge import from_nnx as from_nnx
from jaxmeta.models.hybrid import hybrid_melu as hybrid_melu
from jaxmeta.models.melu import melu as melu
from jaxmeta.models.mf import biased_mf as biased_mf
from jaxmeta.models.mf import biased_mf_by_id as biased_mf_by_id
from jaxmeta.models.mlp import embedding_mlp as embedding_mlp
from jaxmeta.models.two_tower import two_tower as two_tower

__all__ = (
    "Model",
    "Stage",
    "biased_mf",
    "biased_mf_by_id",
    "combine",
    "embedding_mlp",
    "from_linen",
    "from_nnx",
    "hybrid_melu",
    "mask_where",
    "melu",
    "partition",
    "path_names",
    "two_tower",
)
