import json
from pathlib import Path

from eval_fakes import tiny_bert, tiny_tokenizer

from mipic.training.evaluation.command import eval_command


def test_eval_command_on_saved_checkpoint(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    tiny_bert().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    pairs = tmp_path / "pairs.jsonl"
    words = ["the cat sat", "a dog ran", "red car", "blue bus", "good film", "bad film"]
    pairs.write_text(
        "".join(
            json.dumps({"text1": w, "text2": words[-i - 1], "label": i % 2}) + "\n"
            for i, w in enumerate(words)
        )
    )
    out = tmp_path / "out"
    result = eval_command(str(model_dir), out, pair_labels=pairs, layers=[2], dims=[8, 32], max_items=100,
                          variants=["plain"])
    assert list(result.scores) == ["pairs", "geometry", "exits"]  # exits: cosine to the last layer per budget
    assert result.table("pairs", "ap").shape == (1, 2)
    assert {p.name for p in out.iterdir()} == {"grid.json", "grid.md", "heatmap_pairs_ap.png", "compare.md",
                                               "compare.json", "variants", "heatmap_exits_cosine_to_last.png"}


def test_eval_compares_plain_pca_and_heads_on_a_model_with_heads(tiny_heads_model_dir: Path, tmp_path: Path) -> None:
    retrieval = tmp_path / "ret"
    retrieval.mkdir()
    docs = ["the quick brown fox", "a lazy dog", "the cat is a model", "embed this long text", "short dim layer"]
    (retrieval / "corpus.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                                    for i, t in enumerate(docs)))
    (retrieval / "queries.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "text": t.split()[-1]}) + "\n"
                                                     for i, t in enumerate(docs)))
    (retrieval / "qrels.jsonl").write_text("".join(json.dumps({"query_id": f"q{i}", "doc_id": f"d{i}", "score": 1})
                                                   + "\n" for i in range(len(docs))))
    out = tmp_path / "out"
    result = eval_command(str(tiny_heads_model_dir), out, retrieval=retrieval, fit_sentences=64)
    assert result.meta["read_out"] == "heads"
    summary = json.loads((out / "compare.json").read_text())["variants"]
    assert set(summary) == {"plain", "pca", "heads"}
    assert summary["heads"]["small_budgets_won"].endswith("/9")  # every budget of the tiny model is small
    served = json.loads((out / "grid.json").read_text())
    heads_grid = json.loads((out / "variants" / "heads" / "grid.json").read_text())
    assert served["scores"] == heads_grid["scores"]
    assert (out / "compare.md").read_text().startswith("# Read-outs compared")
