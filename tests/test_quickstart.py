"""The README's two quickstart commands are the ones CI and users run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_exactly_two_quickstart_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert all(c.startswith("pip install torch==2.13.0") for c in commands)
    assert commands[0].endswith("python -m benchmarks.run")
    assert commands[1].endswith("python -m pytest tests -q")


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def test_readme_seq2vec_example_runs_and_trains():
    """The README's Seq2Vec block, executed as written: a step of training on random tokens."""
    import torch

    import fused_rnn

    block = next(b for b in re.findall(r"```python\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
                 if "class Seq2Vec" in b)
    namespace = {"torch": torch, "fused_rnn": fused_rnn}
    exec(block, namespace)
    model = namespace["Seq2Vec"](vocab=50, emb=8, hidden=12, classes=3)
    tokens, lengths = torch.randint(0, 50, (4, 9)), torch.tensor([9, 3, 5, 1])
    with fused_rnn.use_backend("reference"):
        logits = model(tokens, lengths)
        assert logits.shape == (4, 3)
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert all(p.grad is not None for p in model.parameters())
