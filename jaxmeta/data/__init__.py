"""Data: the built-in synthetic data, MovieLens and MeLU files, any interactions table,
feature encoding (item text vectors included) and the cold-start protocol."""

from jaxmeta.data import features as features
from jaxmeta.data import interactions as interactions
from jaxmeta.data import movielens as movielens
from jaxmeta.data import splits as splits
from jaxmeta.data import synthetic as synthetic
from jaxmeta.data import text_features as text_features
from jaxmeta.data.features import FeatureEncoder as FeatureEncoder
from jaxmeta.data.features import FeatureSpec as FeatureSpec
from jaxmeta.data.features import FieldSpec as FieldSpec
from jaxmeta.data.features import Vocabulary as Vocabulary
from jaxmeta.data.features import melu_encoder as melu_encoder
from jaxmeta.data.interactions import check_ids_in_features as check_ids_in_features
from jaxmeta.data.interactions import read_features as read_features
from jaxmeta.data.interactions import read_interactions as read_interactions
from jaxmeta.data.splits import SCENARIOS as SCENARIOS
from jaxmeta.data.splits import cold_start_split as cold_start_split
from jaxmeta.data.splits import melu_split as melu_split
from jaxmeta.data.splits import recbole_split as recbole_split

__all__ = (
    "SCENARIOS",
    "FeatureEncoder",
    "FeatureSpec",
    "FieldSpec",
    "Vocabulary",
    "check_ids_in_features",
    "cold_start_split",
    "features",
    "interactions",
    "melu_encoder",
    "melu_split",
    "movielens",
    "read_features",
    "read_interactions",
    "recbole_split",
    "splits",
    "synthetic",
    "text_features",
)
