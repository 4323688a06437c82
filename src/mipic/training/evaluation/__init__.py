"""Budget-grid evaluation: an encoder scored at every (layer, dim) on pairs, retrieval, probes, geometry."""

from mipic.training.evaluation.command import eval_command, load_encoder
from mipic.training.evaluation.encoders import AllLayersEncoder, BudgetEncoder, TorchBudgetEncoder
from mipic.training.evaluation.geometry import (
    alignment,
    effective_rank,
    geometry_metrics,
    isotropy,
    uniformity,
)
from mipic.training.evaluation.grid import default_dims, run_grid
from mipic.training.evaluation.pooling import (
    POOLING_VARIANTS,
    PoolingVariant,
    mean_pool,
    pool_hidden_states,
    truncate_normalize,
)
from mipic.training.evaluation.probe import probe_accuracy
from mipic.training.evaluation.report import write_report
from mipic.training.evaluation.result import GridResult
from mipic.training.evaluation.retrieval import retrieval_metrics
from mipic.training.evaluation.similarity import pair_classification_metrics, pair_similarity_metrics
from mipic.training.evaluation.suites import (
    ClassificationSuite,
    GeometrySuite,
    PairClassificationSuite,
    PairSimilaritySuite,
    RetrievalSuite,
    Suite,
    builtin_suites,
    collect_suites,
    load_classification,
    load_pair_classification,
    load_pair_similarity,
    load_retrieval,
)

__all__ = [
    "POOLING_VARIANTS",
    "AllLayersEncoder",
    "BudgetEncoder",
    "ClassificationSuite",
    "GeometrySuite",
    "GridResult",
    "PairClassificationSuite",
    "PairSimilaritySuite",
    "PoolingVariant",
    "RetrievalSuite",
    "Suite",
    "TorchBudgetEncoder",
    "alignment",
    "builtin_suites",
    "collect_suites",
    "default_dims",
    "effective_rank",
    "eval_command",
    "geometry_metrics",
    "isotropy",
    "load_classification",
    "load_encoder",
    "load_pair_classification",
    "load_pair_similarity",
    "load_retrieval",
    "mean_pool",
    "pair_classification_metrics",
    "pair_similarity_metrics",
    "pool_hidden_states",
    "probe_accuracy",
    "retrieval_metrics",
    "run_grid",
    "truncate_normalize",
    "uniformity",
    "write_report",
]
