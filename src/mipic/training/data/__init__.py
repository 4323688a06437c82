"""Packaged-corpus loaders: training sentences and pairs, and held-out built-in eval suites."""

from mipic.training.data.corpus import (
    DEFAULT_SPLIT_SEED,
    EVAL_FRACTION,
    Split,
    available_sources,
    load_documents,
    split_documents,
    split_of,
)
from mipic.training.data.fetch import DataUnavailableError, PackageSpec, fetch_wheel
from mipic.training.data.pairs import DEFAULT_PAIR_KINDS, PairKind, load_pairs
from mipic.training.data.paths import DATA_DIR_ENV, resolve_data_dir
from mipic.training.data.records import Document
from mipic.training.data.sentences import load_sentences
from mipic.training.data.suites import DEFAULT_SUITE_SIZE, BuiltinSuiteFiles, write_builtin_suites

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_PAIR_KINDS",
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_SUITE_SIZE",
    "EVAL_FRACTION",
    "BuiltinSuiteFiles",
    "DataUnavailableError",
    "Document",
    "PackageSpec",
    "PairKind",
    "Split",
    "available_sources",
    "fetch_wheel",
    "load_documents",
    "load_pairs",
    "load_sentences",
    "resolve_data_dir",
    "split_documents",
    "split_of",
    "write_builtin_suites",
]
