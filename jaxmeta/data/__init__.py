"""Data: the built-in synthetic data, MovieLens and MeLU files, any interactions table."""

from jaxmeta.data import interactions as interactions
from jaxmeta.data import movielens as movielens
from jaxmeta.data import synthetic as synthetic
from jaxmeta.data.interactions import check_ids_in_features as check_ids_in_features
from jaxmeta.data.interactions import read_features as read_features
from jaxmeta.data.interactions import read_interactions as read_interactions

__all__ = (
    "check_ids_in_features",
    "interactions",
    "movielens",
    "read_features",
    "read_interactions",
    "synthetic",
)
