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
    result = eval_command(str(model_dir), out, pair_labels=pairs, layers=[2], dims=[8, 32], max_items=100)
    assert list(result.scores) == ["pairs", "geometry"]
    assert result.table("pairs", "ap").shape == (1, 2)
    assert {p.name for p in out.iterdir()} == {"grid.json", "grid.md", "heatmap_pairs_ap.png"}
