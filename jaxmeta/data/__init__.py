"""Data: the built-in synthetic data, MovieLens and MeLU files, any interactions table,
feature encoding (item text vectors included), the cold-start protocol, and one
assembly entry per source (:mod:`jaxmeta.data.datasets`) that every command uses."""

from jaxmeta.data import datasets as datasets
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
from jaxmeta.data.datasets import Dataset as Dataset

__all__ = (
    "SCENARIOS",
    "Dataset",
    "FeatureEncoder",
    "FeatureSpec",
    "FieldSpec",
    "Vocabulary",
    "check_ids_in_features",
    "datasets",
    "features",
    "interactions",
    "melu_encoder",
    "movielens",
    "read_features",
    "read_interactions",
    "splits",
    "synthetic",
    "text_features",
)
