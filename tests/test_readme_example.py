"""The README's library example runs as written (the doctest of the user's manual); the
fresh-venv variant, with and without the extension, is tests/test_packaging.py."""
import runpy

from test_packaging import readme_example


def test_the_readme_library_example_runs(tmp_path, monkeypatch):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    monkeypatch.chdir(tmp_path)
    env = runpy.run_path(str(script))
    assert env["images"].shape == (8, 1, 8, 8) and env["log_px"].shape == (8,)
    assert (tmp_path / "my_ntm" / "README.md").is_file()


def test_the_readme_condition_tokens_example_runs(tmp_path, monkeypatch):
    """The how-to of conditioning on one's own encoder's tokens runs as written."""
    from test_packaging import ROOT

    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- cond-tokens-example -->", 1)[1].split("```python\n", 1)[1]
    script = tmp_path / "cond_example.py"
    script.write_text(block.split("```", 1)[0])
    monkeypatch.chdir(tmp_path)
    env = runpy.run_path(str(script))
    assert env["images"].shape == (8, 1, 8, 8) and env["same"].shape == (4, 1, 8, 8)
    assert env["log_px"].shape == (8,) and env["model"].cond_dim == 32


def test_the_docstring_examples_run():
    """Docstrings of the public API carry short examples; they run here."""
    import doctest

    import ntm_engine._extension
    import ntm_engine.models.ntm
    import ntm_engine.models.pretrained
    for module in (ntm_engine.models.ntm, ntm_engine.models.pretrained, ntm_engine._extension):
        result = doctest.testmod(module, raise_on_error=False, verbose=False)
        assert result.attempted > 0 and result.failed == 0, module.__name__
