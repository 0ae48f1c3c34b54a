"""docs/tutorial.md cannot rot: its Python blocks run in order, in one namespace, in an empty directory."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_every_code_block_of_the_tutorial_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```(\w*)\n(.*?)```", DOC.read_text(), re.S)
    assert blocks and all(lang == "python" for lang, _ in blocks)
    namespace = {"__name__": "tutorial"}
    for k, (_, code) in enumerate(blocks):
        exec(compile(code, f"{DOC.name} block {k + 1}", "exec"), namespace)
